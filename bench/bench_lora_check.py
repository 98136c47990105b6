"""Benchmark: the LoRA regime. Which captions of a 40-picture LoRA dataset are wrong?

For each of 10 datasets per noise level (10 % and 25 % of captions wrong), written by `write_world_dataset`: 40
pictures of a crescent (a shape the shipped base pipeline never saw), one attribute wrong in the wrong captions (the
attribute cycles over colour, size, position and background across the datasets), sentence captions, then again
with tag captions. Each dataset gets its own LoRA (`train_flux_lora`, rank 8, 300 steps, the per-item losses
tracked with σ), then the caption check (`check_captions`, its defaults, resolution 32) on the base pipeline and
with the LoRA loaded. Scores, higher = more suspect:

- **mean training loss** and **timestep-normalised loss** of the LoRA's training (the item statistics);
- **probe on base** (the check's `score`: own loss − best edit's loss, base pipeline) and **probe on LoRA**;
- **the contrastive anchor**: a CLIP-style dual encoder (a small CNN and a 2-layer text transformer over the base
  pipeline's T5 tokens, InfoNCE) trained on the same 20,000 pretraining scenes with the same captions, scored by
  −cosine(image, caption) and by its own caption-edit margin (best cosine among the check's edits − the caption's).

AUROC and precision@k (k = the number of wrong captions) per dataset (mean and range) and pooled over the 10 datasets.
Run: python bench/bench_lora_check.py [--datasets 10]. Writes bench/results/lora_check.md.
"""
import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from caption_evaluator.captions.check import check_captions
from caption_evaluator.captions.datasets import read_caption_dataset
from caption_evaluator.captions.slots import dataset_edits
from caption_evaluator.demos.base_pipeline import load_base_pipeline
from caption_evaluator.demos.lora import train_flux_lora
from caption_evaluator.demos.world import WORLD_SYNONYMS, scene_caption, world_samples, write_world_dataset
from caption_evaluator.ranking import auroc
from caption_evaluator.tracking.aggregator import StreamingAggregator

RESULTS = Path(__file__).parent / "results"
ATTRIBUTES = ("colour", "size", "position", "background")
SCORES = ("mean training loss", "timestep-normalised loss", "probe on base", "probe on LoRA", "anchor: cosine", "anchor: edit margin")


class DualEncoder(torch.nn.Module):
    "The contrastive anchor: a CNN for 32×32 pictures and a 2-layer transformer over T5 token ids, both to unit 64-d vectors."
    def __init__(self, vocab: int, width: int = 64):
        super().__init__()
        conv = lambda i, o: [torch.nn.Conv2d(i, o, 3, padding=1), torch.nn.GELU(), torch.nn.Conv2d(o, o, 3, padding=1, stride=2), torch.nn.GELU()]
        self.image = torch.nn.Sequential(*conv(3, 32), *conv(32, 64), *conv(64, 96), torch.nn.Flatten(), torch.nn.Linear(96 * 16, width))
        self.embed, self.pos = torch.nn.Embedding(vocab, width), torch.nn.Parameter(torch.zeros(32, width))
        self.text = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(width, 4, 128, batch_first=True, dropout=0.0), 2)
        self.out, self.scale = torch.nn.Linear(width, width), torch.nn.Parameter(torch.tensor(2.6))

    def encode_images(self, x): return F.normalize(self.image(x), dim=-1)

    def encode_text(self, ids):
        pad = ids == 0
        h = self.text(self.embed(ids) + self.pos[: ids.shape[1]], src_key_padding_mask=pad)
        return F.normalize(self.out((h * ~pad[..., None]).sum(1) / (~pad).sum(1, keepdim=True).clamp(min=1)), dim=-1)


def train_anchor(tokenizer, pictures: int = 20000, steps: int = 3000, batch: int = 128, seed: int = 0) -> DualEncoder:
    "InfoNCE on the base pipeline's pretraining scenes (`world_samples(20000, seed=0)`), captions drawn afresh each step."
    pics_u8, _, scenes = world_samples(pictures, seed=seed, style="mixed")
    pics = torch.from_numpy(pics_u8).permute(0, 3, 1, 2).float() / 127.5 - 1
    torch.manual_seed(seed)
    model, rng, g = DualEncoder(len(tokenizer)), np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    for step in range(steps):
        for grp in opt.param_groups: grp["lr"] = 1e-3 * min(1.0, (step + 1) / 200) * 0.5 * (1 + np.cos(np.pi * step / steps))
        idx = torch.randint(len(pics), (batch,), generator=g)
        caps = [scene_caption(scenes[i], rng, ("sentence", "tags")[int(rng.integers(2))]) for i in idx.tolist()]
        ids = tokenizer(caps, padding="max_length", max_length=32, truncation=True, return_tensors="pt").input_ids
        logits = model.scale.exp() * model.encode_images(pics[idx]) @ model.encode_text(ids).T
        loss = (F.cross_entropy(logits, torch.arange(batch)) + F.cross_entropy(logits.T, torch.arange(batch))) / 2
        opt.zero_grad(); loss.backward(); opt.step()
        if step % 500 == 0: print(f"  anchor step {step}: loss {loss.item():.3f}", flush=True)
    return model.eval()


@torch.no_grad()
def anchor_scores(model, tokenizer, ds, edits) -> tuple[np.ndarray, np.ndarray]:
    "−cosine(image, caption), and the best edit's cosine − the caption's (the check's own edits)."
    pics = torch.stack([torch.from_numpy(np.asarray(ds.image(i).convert("RGB").resize((32, 32)))).permute(2, 0, 1).float() / 127.5 - 1 for i in range(len(ds))])
    img = model.encode_images(pics)
    enc = lambda caps: model.encode_text(tokenizer(list(caps), padding="max_length", max_length=32, truncation=True, return_tensors="pt").input_ids)
    own = (img * enc(ds.captions)).sum(-1)
    margin = []
    for i, cap in enumerate(ds.captions):
        alts = [a for a, _ in edits(cap)]
        margin.append(float((enc(alts) @ img[i]).max() - own[i]) if alts else -np.inf)
    return -own.numpy(), np.array(margin)


def precision_at_k(score: np.ndarray, wrong: np.ndarray) -> float:
    k = int(wrong.sum())
    return float(wrong[np.argsort(-np.nan_to_num(score, nan=-np.inf), kind="stable")[:k]].mean())


def one_dataset(pipe, anchor, noise: float, style: str, seed: int, root: Path) -> dict:
    "Write a dataset, train its LoRA, run the check, score every way: {score: values}, plus the truth."
    attribute = ATTRIBUTES[seed % len(ATTRIBUTES)]
    truth = write_world_dataset(root / "ds", n=40, noise=noise, attribute=attribute, style=style, seed=seed)
    ds = read_caption_dataset(root / "ds")
    agg = StreamingAggregator(timestep_range=(0, 1000))
    lora = train_flux_lora(pipe, [ds.image(i) for i in range(len(ds))], ds.captions, root / "lora", keys=ds.keys, seed=seed, aggregator=agg, progress=False)
    stats = agg.item_stats("train")
    check = check_captions(pipe, ds, lora=lora, resolution=32, seed=seed, progress=False)
    cos, margin = anchor_scores(anchor, pipe.tokenizer_2, ds, dataset_edits(ds.captions))
    s = {"mean training loss": [stats[k]["average_loss"] for k in ds.keys], "timestep-normalised loss": [stats[k]["tnorm_average_loss"] for k in ds.keys],
         "probe on base": check.score, "probe on LoRA": check.lora["score"], "anchor: cosine": cos, "anchor: edit margin": margin}
    return {"scores": {k: np.nan_to_num(np.asarray(v, float), nan=-1e9) for k, v in s.items()}, "attribute": attribute,
            "wrong": np.array([r["wrong"] for r in truth["items"]]), "reads": check.reads_captions["verdict"]}


def table(runs: list[dict]) -> list[str]:
    rows = []
    for name in SCORES:
        a = [auroc(r["scores"][name], r["wrong"]) for r in runs]
        p = [precision_at_k(r["scores"][name], r["wrong"]) for r in runs]
        pooled = auroc(np.concatenate([r["scores"][name] for r in runs]), np.concatenate([r["wrong"] for r in runs]))
        rows.append(f"| {name} | **{pooled:.3f}** | {np.mean(a):.3f} | {min(a):.3f}–{max(a):.3f} | {np.mean(p):.2f} | {min(p):.2f}–{max(p):.2f} |")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", type=int, default=10); ap.add_argument("--anchor-steps", type=int, default=3000)
    ap.add_argument("--styles", default="sentence,tags")
    a = ap.parse_args()
    t0 = time.perf_counter()
    pipe = load_base_pipeline()
    anchor = train_anchor(pipe.tokenizer_2, steps=a.anchor_steps)
    t_anchor = time.perf_counter() - t0
    out = ["# LoRA regime: which captions of a 40-picture LoRA dataset are wrong", "",
           f"`python bench/bench_lora_check.py --datasets {a.datasets}` on {platform.processor() or platform.machine()}, torch {torch.__version__}, "
           f"{torch.get_num_threads()} thread{'s' if torch.get_num_threads() != 1 else ''}. Base: the shipped pipeline (`load_base_pipeline`). Anchor trained in {t_anchor:.0f} s.", "",
           "Per score: AUROC pooled over the datasets' items, the mean and range of the per-dataset AUROC, and of precision@k (k = the wrong captions).", ""]
    for style in a.styles.split(","):
        for noise in (0.10, 0.25):
            runs, t1 = [], time.perf_counter()
            for d in range(a.datasets):
                with tempfile.TemporaryDirectory() as tmp: runs.append(one_dataset(pipe, anchor, noise, style, 1000 * int(noise * 100) + d, Path(tmp)))
                print(f"{style} {noise:.0%} dataset {d} ({runs[-1]['attribute']}, {runs[-1]['wrong'].sum()} wrong): "
                      f"base {auroc(runs[-1]['scores']['probe on base'], runs[-1]['wrong']):.3f}, "
                      f"LoRA {auroc(runs[-1]['scores']['probe on LoRA'], runs[-1]['wrong']):.3f}, "
                      f"loss {auroc(runs[-1]['scores']['mean training loss'], runs[-1]['wrong']):.3f}, "
                      f"anchor {auroc(runs[-1]['scores']['anchor: edit margin'], runs[-1]['wrong']):.3f}", flush=True)
            out += [f"## {style} captions, {noise:.0%} wrong ({a.datasets} datasets × 40 pictures, {sum(int(r['wrong'].sum()) for r in runs)} wrong; "
                    f"{(time.perf_counter() - t1) / a.datasets:.0f} s per dataset)", "",
                    "| score | AUROC pooled | AUROC mean | AUROC range | precision@k mean | precision@k range |", "|---|---:|---:|---:|---:|---:|", *table(runs), ""]
            by_attr = {att: [r for r in runs if r["attribute"] == att] for att in ATTRIBUTES}
            out += ["Probe on base, pooled AUROC by the attribute the wrong captions get wrong: " + ", ".join(
                f"{att} {auroc(np.concatenate([r['scores']['probe on base'] for r in rs]), np.concatenate([r['wrong'] for r in rs])):.3f}"
                for att, rs in by_attr.items() if rs), ""]
    out.append(f"Total {time.perf_counter() - t0:.0f} s.")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "lora_check.md").write_text("\n".join(out) + "\n")
    print("\n".join(out))


if __name__ == "__main__":
    main()
