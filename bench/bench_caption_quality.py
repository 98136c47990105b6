"""Benchmark: finding corrupted captions of a text-to-image denoiser, mean loss vs the caption probe.

Data: scikit-learn's 1,797 digits (8x8, scaled to [-1, 1]) with captions "a {style} handwritten digit
{class word}" (style drawn per item from neat / messy / bold / thin). A share of the captions gets a wrong
class word: `uniform` (any other class) or `classcond` (each digit's look-alike, `CONFUSABLE_DIGITS`), in every
class, seeded. Model: a small residual-MLP denoiser with FiLM conditioning on a learned bag-of-words caption
encoder (plain torch, no pretrained weights), trained from scratch with the DDPM linear schedule (1,000 steps),
epsilon prediction, 10 % caption dropout (so the empty caption means something). Every training loss is tracked
with its timestep (`StreamingAggregator(timestep_range=(0, 1000))`).

Scores: mean training loss, timestep-normalised loss (`tnorm_average_loss`), and the caption probe's
empty gap and swap margin (`probe_captions`, alternatives = the nine other class words, 2 label-free timesteps,
1 noise draw: 22 forward passes per item). AUROC and precision@k at k = number of corrupted captions.
This is a prototype of issue 10's benchmark: the denoiser and the captioned digits live here until they move
into the library.

Run: python bench/bench_caption_quality.py [--seeds 3] [--steps 1500]
Writes bench/results/caption_quality.md.
"""
import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits

from caption_evaluator.aggregator import StreamingAggregator
from caption_evaluator.demo import CONFUSABLE_DIGITS, label_noise_report
from caption_evaluator.probe import probe_captions

RESULTS = Path(__file__).parent / "results" / "caption_quality.md"
WORDS = ["<empty>", "a", "neat", "messy", "bold", "thin", "handwritten", "digit",
         "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
CLASS0 = WORDS.index("zero")
SETTINGS = (("uniform", 0.1), ("uniform", 0.3), ("classcond", 0.1), ("classcond", 0.3))


def digits():
    d = load_digits()
    return torch.tensor(d.data, dtype=torch.float32) / 8 - 1, torch.tensor(d.target)


def corrupt(labels, kind, noise, seed):
    "(caption class per item, corrupted mask): in every class round(noise * n_c) items get a wrong class word."
    g = torch.Generator().manual_seed(seed)
    y, bad = labels.clone(), torch.zeros(len(labels), dtype=torch.bool)
    for c in range(10):
        idx = torch.nonzero(labels == c).flatten()
        pick = idx[torch.randperm(len(idx), generator=g)[:round(noise * len(idx))]]
        bad[pick] = True
        y[pick] = CONFUSABLE_DIGITS[c] if kind == "classcond" else (c + torch.randint(1, 10, (len(pick),), generator=g)) % 10
    return y, bad


def caption_ids(classes, seed):
    "Word ids of 'a {style} handwritten digit {class}' per item."
    style = torch.randint(2, 6, (len(classes),), generator=torch.Generator().manual_seed(seed))
    one = torch.ones_like(classes)
    return torch.stack([one, style, one * 6, one * 7, classes + CLASS0], 1)


class CaptionDenoiser(nn.Module):
    "Residual MLP on the flattened noisy image and a sinusoidal timestep, FiLM-conditioned on a bag-of-words caption."
    def __init__(self, dim=64, hidden=256):
        super().__init__()
        self.words = nn.EmbeddingBag(len(WORDS), dim, mode="mean")
        self.inp, self.film = nn.Linear(64 + 32, hidden), nn.Linear(dim, 4 * hidden)
        self.l1, self.l2, self.out = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, 64)

    def encode(self, ids): return self.words(ids)

    def forward(self, x, t, cond):
        freq = t[:, None].float() / 1000 * 50 * torch.exp(-0.5 * torch.arange(16, device=x.device))[None]
        h = F.silu(self.inp(torch.cat([x.flatten(1), freq.sin(), freq.cos()], 1)))
        g1, b1, g2, b2 = self.film(cond).chunk(4, 1)
        h = h + F.silu(self.l1(h * (1 + g1) + b1))
        h = h + F.silu(self.l2(h * (1 + g2) + b2))
        return self.out(h).reshape(x.shape)


def train(x, ids, abar, seed, steps, batch=128):
    "DDPM training with epsilon prediction and 10 % caption dropout; every loss tracked with its timestep."
    torch.manual_seed(seed)
    model, agg = CaptionDenoiser(), StreamingAggregator(timestep_range=(0, 1000))
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    g = torch.Generator().manual_seed(seed)
    empty = torch.zeros(batch, 1, dtype=torch.long)
    for s in range(steps):
        b, t = torch.randint(0, len(x), (batch,), generator=g), torch.randint(0, 1000, (batch,), generator=g)
        eps = torch.randn(batch, 64, generator=g)
        a = abar[t][:, None]
        cond = torch.where((torch.rand(batch, generator=g) < 0.1)[:, None], model.encode(empty), model.encode(ids[b]))
        per = (model(a.sqrt() * x[b] + (1 - a).sqrt() * eps, t, cond) - eps).pow(2).mean(1)
        opt.zero_grad(); per.mean().backward(); opt.step()
        agg.update("train", b, per.detach(), step=s, timesteps=t)
    return model, agg


def one_run(kind, noise, seed, steps):
    x, labels = digits()
    classes, bad = corrupt(labels, kind, noise, seed)
    ids = caption_ids(classes, seed)
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0)
    t0 = time.process_time()
    model, agg = train(x, ids, abar, seed, steps)
    train_s = time.process_time() - t0
    with torch.no_grad():
        conds, empty = model.encode(ids), model.encode(torch.zeros(1, 1, dtype=torch.long))[0]
        other = torch.stack([torch.tensor([c for c in range(10) if c != y]) for y in classes.tolist()])   # [N, 9]
        alt_ids = ids[:, None].repeat(1, 9, 1)
        alt_ids[:, :, 4] = other + CLASS0
        alts = model.encode(alt_ids.reshape(-1, 5)).reshape(len(x), 9, -1)
    t0 = time.perf_counter()
    probe = probe_captions(model, x, conds, empty, alts, abar, n_timesteps=2, noise_draws=1, batch_size=256, progress=False)
    probe_s = time.perf_counter() - t0
    stats = agg.item_stats("train")
    keys = [str(i) for i in range(len(x))]
    corrupted = {str(i) for i in torch.nonzero(bad).flatten().tolist()}
    def get(f): return [stats[k][f] if k in stats and stats[k][f] is not None else 0.0 for k in keys]
    scores = {"mean loss": get("average_loss"), "tnorm_average_loss": get("tnorm_average_loss"),
              "empty_gap": probe.empty_gap.tolist(), "swap_margin": probe.swap_margin.tolist()}
    out = {n: label_noise_report(dict(zip(keys, v)), corrupted) for n, v in scores.items()}
    return out, train_s, probe_s, probe.timesteps, probe.forward_passes


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--out", default=str(RESULTS))
    a = ap.parse_args()
    torch.set_num_threads(1)
    rows, cost = [], []
    for kind, noise in SETTINGS:
        runs = [one_run(kind, noise, s, a.steps) for s in range(a.seeds)]
        cost += [(r[1], r[2], r[4]) for r in runs]
        for name in runs[0][0]:
            au = [r[0][name]["auroc"] for r in runs]; pk = [r[0][name]["precision_at_k"] for r in runs]
            rows.append(f"| {kind} {noise:.0%} | {name} | {np.mean(au):.4f} ({min(au):.4f}–{max(au):.4f}) | {np.mean(pk):.3f} ({min(pk):.3f}–{max(pk):.3f}) |")
            print(rows[-1])
    train_s, probe_s, passes = (np.mean([c[i] for c in cost]) for i in range(3))
    lines = ["# Caption-quality benchmark (prototype)", "",
             f"Captioned digits (1,797 items), {a.seeds} seeds per setting, a CaptionDenoiser trained {a.steps} steps "
             f"(batch 128); torch {torch.__version__}, {platform.machine()}, 1 thread. Command: `python bench/bench_caption_quality.py`", "",
             "| setting | score | AUROC (mean, range) | precision@k (mean, range) |", "|---|---|---:|---:|", *rows, "",
             f"- Probe: 2 label-free timesteps x 1 draw x (own + empty + 9 alternatives) = {passes:.0f} forward passes per item; "
             f"{probe_s:.2f} s wall for all 1,797 items ({1797 / probe_s:,.0f} items/s); training {train_s:.1f} s CPU.",
             "- Issue 10's targets: swap-margin AUROC >= 0.95 in every setting and seed (>= 0.99 at 10 % uniform), "
             "precision@k >= 0.85 at 30 % class-conditional, <= 30 passes per item, 1,797 items probed in <= 60 s.", ""]
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
