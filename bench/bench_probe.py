"""Benchmark: image–caption pairs per second through `probe_pipeline`, against the bare denoiser forward (the floor).

For each tiny pipeline family (`tiny_pipeline`: SD 1.5, SDXL, SD3, FLUX; real diffusers classes, random weights), 64
images of 16×16 with captions and 3 edits each are probed with the default draws (2 timesteps, 1 screening and
2 refining draws). The floor is the pipeline's own denoiser call (`pipeline_parts(pipe).denoise`) over the same
model batches (the same number of rows in the same sizes), on inputs prepared beforehand: no noise, no targets, no losses,
no caption or image encoding. Both run in one process, interleaved; medians of process CPU time.

Run: python bench/bench_probe.py [--repeats 3] [--threads 1] [--device cpu]
Writes bench/results/probe.md.
"""
import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from caption_evaluator.captions.edits import probe_caption_edits
from caption_evaluator.captions.pipelines import pipeline_parts, probe_pipeline
from caption_evaluator.captions.tiny_pipelines import PIPELINE_FAMILIES, tiny_pipeline

N, BATCH = 64, 64
COLOURS, SHAPES = ("red", "green", "blue", "white"), ("disc", "square")
RESULTS = Path(__file__).parent / "results" / "probe.md"


def edits(caption: str) -> list[str]:
    "Three alternatives: the caption with each other colour."
    colour = caption.split()[1]
    return [caption.replace(colour, c) for c in COLOURS if c != colour]


def load(family: str, root: Path, device: str, dtype):
    from diffusers import DiffusionPipeline
    return DiffusionPipeline.from_pretrained(tiny_pipeline(family, root / family), dtype=dtype).to(device)


def timed(fn, clock) -> float:
    t0 = clock(); fn(); return clock() - t0


def floor_inputs(parts, latents, sizes: list[int]):
    "Model inputs for batches of the probe's sizes: noisy latents, model timesteps and conditionings, made once."
    cond = parts.encode(["a red disc"] * max(sizes))
    t = parts.schedule.model_timestep(torch.full((max(sizes),), 500, device=latents.device))
    x = latents[torch.arange(max(sizes)) % latents.shape[0]]
    return [(x[:n], t[:n], tuple(c[:n] for c in cond)) for n in sizes]


def bench_family(family: str, root: Path, args, dtype) -> dict:
    pipe = load(family, root, args.device, dtype)
    kw = dict(max_sequence_length=16) if family in ("sd3", "flux") else {}   # T5 tokens per caption, probe and floor alike
    parts = pipeline_parts(pipe, **kw)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(N, 3, 16, 16, generator=g)
    captions = [f"a {COLOURS[i % 4]} {SHAPES[i % 2]}" for i in range(N)]
    latents = parts.encode_images(images)
    encode = cached_encoder(parts, captions)
    probe = lambda: probe_caption_edits(parts.denoise, encode, latents, captions, edits, parts.schedule, timesteps=[300, 700],
                                        batch_size=BATCH, progress=False)
    whole = lambda: probe_pipeline(pipe, images, captions, edits, timesteps=[300, 700], batch_size=BATCH, progress=False, **kw)
    sizes = []
    counted = lambda x_t, t, c: (sizes.append(x_t.shape[0]), parts.denoise(x_t, t, c))[1]
    first = probe_caption_edits(counted, encode, latents, captions, edits, parts.schedule, timesteps=[300, 700], batch_size=BATCH, progress=False)
    whole()                                                             # warm-up; `sizes`: the model batches one probe sends
    rows = sum(sizes)
    assert rows == round(first.forward_passes * N), (rows, first.forward_passes)
    inputs = floor_inputs(parts, latents, sizes)
    model = pipe.unet if family in ("sd15", "sdxl") else pipe.transformer
    def floor():
        with torch.no_grad():
            for x, t, c in inputs: parts.denoise(x, t, c)
    floor()
    clock = time.process_time if args.device == "cpu" else time.perf_counter
    sync = (lambda: torch.cuda.synchronize()) if args.device.startswith("cuda") else (lambda: None)
    p_t, f_t, w_t = [], [], []
    for _ in range(args.repeats):
        p_t.append(timed(lambda: (probe(), sync()), clock)); f_t.append(timed(lambda: (floor(), sync()), clock))
        w_t.append(timed(lambda: (whole(), sync()), clock))
    p, f, w = statistics.median(p_t), statistics.median(f_t), statistics.median(w_t)
    return {"family": family, "rows": rows, "passes": first.forward_passes, "probe_rate": rows / p, "floor_rate": rows / f,
            "ratio": f / p, "whole_rate": rows / w, "whole_ratio": f / w, "params": sum(q.numel() for q in model.parameters())}


def cached_encoder(parts, captions):
    "`parts.encode` with every caption the probe will ask for encoded beforehand: the engine is timed, not the text encoders."
    strings = sorted({""} | set(captions) | {e for c in captions for e in edits(c)})
    bank, row = parts.encode(strings), {s: i for i, s in enumerate(strings)}
    return lambda caps: tuple(b[torch.tensor([row[c] for c in caps])] for b in bank)


def report(results: list[dict], args) -> str:
    head = (f"# Probe benchmark\n\n{N} images (16×16) per tiny pipeline, 3 edits per caption, default draws (2 timesteps, 1 screening + "
            f"2 refining draws), model batches of {BATCH}; device {args.device}, dtype {args.dtype}, torch {torch.__version__}, "
            f"{platform.machine()}, {os.cpu_count()} CPUs, {args.threads} thread(s); median of {args.repeats}, "
            f"{'CPU' if args.device == 'cpu' else 'wall'} time.\nCommand: `python {' '.join(sys.argv)}`\n\n")
    rows = ["| family | denoiser params | model rows | passes per item | floor pairs/s | probe pairs/s | probe / floor | with encoding pairs/s | with encoding / floor |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    rows += [f"| {r['family']} | {r['params']:,} | {r['rows']:,} | {r['passes']:.1f} | {r['floor_rate']:,.0f} | {r['probe_rate']:,.0f} | "
             f"{r['ratio']:.2f}x | {r['whole_rate']:,.0f} | {r['whole_ratio']:.2f}x |" for r in results]
    return head + "\n".join(rows) + ("\n\n`probe` is `probe_caption_edits` on latents and caption encodings prepared beforehand (the engine: noise, "
        "model calls, losses, calibration, refining); `with encoding` is `probe_pipeline` end to end, the VAE and text encoders "
        "included (with these tiny models the VAE costs about as much as the denoiser; with a real model the denoiser's ~60 "
        "passes per item dwarf one VAE pass).\nTarget: probe / floor >= 0.9x (the engine costs no more than a tenth on top of the model).\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--families", nargs="+", default=list(PIPELINE_FAMILIES), choices=PIPELINE_FAMILIES)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as d:
        results = [bench_family(f, Path(d), args, getattr(torch, args.dtype)) for f in args.families]
    for r in results: print(f"{r['family']:>5}: floor {r['floor_rate']:8,.0f} pairs/s, probe {r['probe_rate']:8,.0f} (x{r['ratio']:.2f}), "
                            f"with encoding {r['whole_rate']:8,.0f} (x{r['whole_ratio']:.2f})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report(results, args))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
