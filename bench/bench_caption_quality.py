"""Benchmark: finding wrong captions of a text-to-image denoiser — training-loss scores against the caption probe.

Part 1, captioned digits (`captioned_digits`: scikit-learn's 1,797 digits captioned "a {style} handwritten
digit {class}"): 4 settings (uniform / class-conditional corruption x 10 % / 30 %) x 3 seeds. A
`CaptionDenoiser` is trained from scratch (`train_caption_denoiser`, 1,500 steps) with every loss tracked
with its timestep and the in-training empty-gap monitor on (`monitor_every=1`). Scores: mean training loss,
timestep-normalised loss, the monitor's empty gap, and `probe_captions` with the nine other class words as
alternatives (defaults: 2 label-free timesteps, 1 screening + 2 refining draws = 30 forward passes per item):
empty gap and swap margin.

Part 2, compositional captions (`captioned_shapes`: 2,000 16x16 RGB pictures, captions from 6 templates over
shape, colour, background, position and size, one attribute wrong in 10 % / 30 % of captions) x 2 seeds,
denoiser trained 3,000 steps with 512 hidden units:
`probe_caption_edits` with single-word edits (`word_swaps`, 4 label-free timesteps) against K = 8 other
items' captions and mean loss; per-attribute AUROC (corrupted in that attribute vs clean) and the probe's
calibration: label-free, and with a third of the wrong captions disclosed as planted.

AUROC and precision@k (k = number of wrong captions). Run: python bench/bench_caption_quality.py
[--seeds 3] [--shape-seeds 2]. Writes bench/results/caption_quality.md and caption_quality.png.
"""
import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from caption_evaluator.tracking.aggregator import StreamingAggregator
from caption_evaluator.captions.data import DIGIT_WORDS, captioned_digits, captioned_shapes
from caption_evaluator.captions.edits import other_captions, probe_caption_edits, word_swaps
from caption_evaluator.noise import label_noise_report
from caption_evaluator.captions.denoiser import ddpm_alphas_cumprod, train_caption_denoiser
from caption_evaluator.captions.probe import probe_captions

RESULTS = Path(__file__).parent / "results"
SETTINGS = (("uniform", 0.1), ("uniform", 0.3), ("classcond", 0.1), ("classcond", 0.3))
DIGIT_SCORES = ("mean loss", "tnorm_average_loss", "empty gap (training monitor)", "empty_gap (probe)", "swap_margin (probe)")


def report(scores, corrupted):
    "AUROC and precision@k of per-item scores (higher = more suspect) against a bool mask."
    keys = [str(i) for i in range(len(corrupted))]
    bad = {k for k, b in zip(keys, corrupted.tolist()) if b}
    return label_noise_report(dict(zip(keys, np.nan_to_num(np.asarray(scores, float), nan=-1e9).tolist())), bad)


def class_word_alternatives(model, data):
    "[N, 9, dim] conditionings of each caption with its class word swapped for the nine others."
    caps = [[c.replace(" " + w, " " + o) for o in DIGIT_WORDS if o != w] for c, w in zip(data.captions, data.attributes["class"])]
    with torch.no_grad(): return model.encode_captions([a for row in caps for a in row]).reshape(len(data), 9, -1)


def digits_run(kind, noise, seed):
    data = captioned_digits(noise, kind, seed)
    agg = StreamingAggregator(timestep_range=(0, 1000))
    t0 = time.process_time()
    model = train_caption_denoiser(data, seed=seed, aggregator=agg, monitor_every=1, progress=False)
    train_s = time.process_time() - t0
    with torch.no_grad(): conds, empty = model.encode_captions(data.captions), model.encode_captions([""])[0]
    alts = class_word_alternatives(model, data)
    t0 = time.perf_counter()
    probe = probe_captions(model, data.images, conds, empty, alts, ddpm_alphas_cumprod(), progress=False)
    probe_s = time.perf_counter() - t0
    st = agg.item_stats("train")
    get = lambda f: [f(st[k]) if k in st else np.nan for k in data.keys]
    scores = {"mean loss": get(lambda e: e["average_loss"]), "tnorm_average_loss": get(lambda e: e["tnorm_average_loss"]),
              "empty gap (training monitor)": get(lambda e: e["values"]["empty_gap"]["mean"]),
              "empty_gap (probe)": probe.empty_gap.numpy(), "swap_margin (probe)": probe.swap_margin.numpy()}
    return {n: report(v, data.corrupted) for n, v in scores.items()}, train_s, probe_s, probe.forward_passes, probe.swap_margin.numpy(), data.corrupted.numpy()


def shapes_run(noise, seed):
    data = captioned_shapes(2000, noise, seed)
    agg = StreamingAggregator(timestep_range=(0, 1000))
    model = train_caption_denoiser(data, steps=3000, hidden=512, seed=seed, aggregator=agg, progress=False)
    t0 = time.perf_counter()
    edits = probe_caption_edits(model, model.encode_captions, data.images, data.captions, word_swaps(data.vocabulary), ddpm_alphas_cumprod(),
                                n_timesteps=4, progress=False)
    probe_s = time.perf_counter() - t0
    others = probe_caption_edits(model, model.encode_captions, data.images, data.captions, other_captions(data.captions, 8, seed), ddpm_alphas_cumprod(), progress=False)
    st = agg.item_stats("train")
    scores = {"mean loss": np.array([st[k]["average_loss"] for k in data.keys]), "swap_margin, K = 8 other captions": others.swap_margin.numpy(),
              "swap_margin, word edits": edits.swap_margin.numpy(), "suspicion (robust z over tags), word edits": edits.suspicion.numpy()}
    attr = np.array([a or "" for a in data.corrupted_attribute])
    table = {}
    for name, s in scores.items():
        row = {"overall": report(s, data.corrupted)["auroc"]}
        for a in data.vocabulary:
            sel = (attr == "") | (attr == a)
            row[a] = report(s[sel], data.corrupted[sel])["auroc"]
        table[name] = row
    own_tag = {"overall": np.nan}                                           # each attribute ranked by its own tag margin
    for a in data.vocabulary:
        sel = (attr == "") | (attr == a)
        own_tag[a] = report(edits.tag_margins[a].numpy()[sel], data.corrupted[sel])["auroc"]
    table["tag margin of the attribute, word edits"] = own_tag
    return table, edits.calibration, edits.forward_passes, probe_s, planted_calibration(model, data, seed)


def planted_calibration(model, data, seed):
    "The calibration with a third of the wrong captions disclosed as planted (what `plant_wrong_words` gives a user), and each tag's AUROC on the other wrong captions."
    bad = np.flatnonzero(data.corrupted.numpy())
    shown = set(np.random.default_rng(seed + 101).choice(bad, len(bad) // 3, replace=False).tolist())
    planted = [data.corrupted_attribute[i] if i in shown else None for i in range(len(data))]
    probe = probe_caption_edits(model, model.encode_captions, data.images, data.captions, word_swaps(data.vocabulary), ddpm_alphas_cumprod(),
                                n_timesteps=4, planted=planted, progress=False)
    attr, rest = np.array([a or "" for a in data.corrupted_attribute]), np.array([p is None for p in planted])
    measured = {}
    for a in data.vocabulary:
        sel = ((attr == "") | (attr == a)) & rest
        measured[a] = report(probe.tag_margins[a].numpy()[sel], data.corrupted[sel])["auroc"]
    return probe.calibration, measured


def fmt_range(v, digits=4):
    if any(x != x for x in v): return "–"
    return f"{np.mean(v):.{digits}f} ({min(v):.{digits}f}–{max(v):.{digits}f})"


def plot(curves, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(curves), figsize=(3.2 * len(curves), 3.0), sharey=True, constrained_layout=True)
    for ax, (title, (s, bad)) in zip(axes, curves.items()):
        bins = np.linspace(np.nanpercentile(s, 0.5), np.nanpercentile(s, 99.5), 40)
        ax.hist(s[~bad], bins, alpha=0.6, label="right caption", density=True)
        ax.hist(s[bad], bins, alpha=0.6, label="wrong caption", density=True)
        ax.set_title(title, fontsize=9); ax.set_xlabel("swap margin (own − best alternative)")
    axes[0].set_ylabel("density"); axes[0].legend(fontsize=8)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--shape-seeds", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS))
    a = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    rows, cost, curves = [], [], {}
    for kind, noise in SETTINGS:
        runs = [digits_run(kind, noise, s) for s in range(a.seeds)]
        cost += [r[1:4] for r in runs]
        curves[f"{kind} {noise:.0%}, seed 0"] = runs[0][4], runs[0][5]
        for name in DIGIT_SCORES:
            au = [r[0][name]["auroc"] for r in runs]; pk = [r[0][name]["precision_at_k"] for r in runs]
            bold = "**" if name.startswith("swap") else ""
            rows.append(f"| {kind} {noise:.0%} | {bold}{name}{bold} | {fmt_range(au)} | {fmt_range(pk, 3)} |")
            print(rows[-1], flush=True)
    train_s, probe_s, passes = (np.mean([c[i] for c in cost]) for i in range(3))
    shape_rows, cal_rows, planted_rows, shape_cost = [], [], [], []
    for noise in (0.1, 0.3):
        runs = [shapes_run(noise, s) for s in range(a.shape_seeds)]
        shape_cost += [(r[2], r[3]) for r in runs]
        for name in runs[0][0]:
            cells = [fmt_range([r[0][name][c] for r in runs], 3) for c in runs[0][0][name]]
            shape_rows.append(f"| {noise:.0%} | {name} | " + " | ".join(cells) + " |")
            print(shape_rows[-1], flush=True)
        for tag in runs[0][1]:
            cal = lambda key: [r[1][tag][key] for r in runs]
            measured = [r[0]["tag margin of the attribute, word edits"][tag] for r in runs]
            cal_rows.append(f"| {noise:.0%} | {tag} | {fmt_range(cal('beat_rate'), 3)} | {fmt_range(cal('expected_auroc'), 3)} | "
                            f"{fmt_range(measured, 3)} | {sum(cal('trusted'))}/{len(runs)} | {sum(v is None for v in cal('verifiable'))}/{len(runs)} | "
                            f"{sum(v is None and m < 0.95 for v, m in zip(cal('verifiable'), measured))}/{len(runs)} |")
            pcal = lambda key: [r[4][0][tag][key] for r in runs]
            pmeasured = [r[4][1][tag] for r in runs]
            planted_rows.append(f"| {noise:.0%} | {tag} | {np.mean(pcal('planted')):.0f} | {fmt_range(pcal('planted_auroc'), 3)} | "
                                f"{fmt_range(pmeasured, 3)} | {sum(v is True for v in pcal('verifiable'))}/{len(runs)} | "
                                f"{sum(v is True and m < 0.95 for v, m in zip(pcal('verifiable'), pmeasured))}/{len(runs)} |")
    attrs = list(captioned_shapes(1).vocabulary)
    plot(curves, out / "caption_quality.png")
    lines = ["# Caption-quality benchmark", "",
             f"torch {torch.__version__}, {platform.machine()}, 1 thread. Command: `python bench/bench_caption_quality.py`", "",
             f"## Captioned digits (1,797 items, {a.seeds} seeds per setting)", "",
             "| setting | score | AUROC (mean, range) | precision@k (mean, range) |", "|---|---|---:|---:|", *rows, "",
             f"- Probe: 2 label-free timesteps x (1 screening draw x 11 captions + 2 refining draws x 2 captions) = {passes:.0f} forward passes per item; "
             f"{probe_s:.2f} s wall for all 1,797 items ({1797 / probe_s:,.0f} items/s). Training (1,500 steps, monitor on) {train_s:.1f} s CPU.",
             "- Targets: swap-margin AUROC >= 0.95 in every setting and seed, >= 0.99 at 10 % uniform; precision@k >= 0.85 at 30 % "
             "class-conditional; <= 30 passes per item; 1,797 items probed in <= 60 s.",
             "- The training monitor (one extra no-grad forward pass with the empty caption per step) is blind to class-conditional "
             "errors: a seven captioned \"one\" still beats the empty caption.", "",
             f"## Compositional captions (captioned shapes, 2,000 items, {a.shape_seeds} seeds, AUROC)", "",
             "Per attribute: items whose wrong word is in that attribute against the clean items. `swap_margin` is the largest "
             "refined margin over the trusted tags and `suspicion` the largest robust z-score of those margins (one score per item "
             "each); the last row ranks each attribute by its own tag margin (`CaptionProbe.tag_margins`).", "",
             "| noise | score | overall | " + " | ".join(attrs) + " |", "|---|---|" + "---:|" * (1 + len(attrs)), *shape_rows, "",
             "Calibration of the word-edit probe, the reference being every item (no labels): beat rate, the share of items where "
             "an edit of the tag beats the own caption (trusted when <= 0.5); expected AUROC, estimated from simulated wrong words "
             "(likely verifiable when >= 0.95: the estimate alone never confirms); against the tag-margin AUROC measured with the labels:", "",
             "| noise | tag | beat rate | expected AUROC (no labels) | measured AUROC | trusted (seeds) | likely verifiable (seeds) | likely, measured < 0.95 (seeds) |",
             "|---|---|---:|---:|---:|---:|---:|---:|", *cal_rows, "",
             "The same probe told a third of the wrong captions as planted (`planted=`: what `plant_wrong_words` gives a user who "
             "plants wrong words before training); verifiable when a trusted tag has at least 20 planted items and a planted AUROC >= 0.95 (with fewer, the label-free verdict stands), and the measured AUROC is on the other "
             "wrong captions:", "",
             "| noise | tag | planted items (mean) | planted AUROC | measured AUROC | verifiable (seeds) | verifiable, measured < 0.95 (seeds) |",
             "|---|---|---:|---:|---:|---:|---:|", *planted_rows, "",
             f"- Word-edit probe: {np.mean([c[0] for c in shape_cost]):.0f} forward passes per item, {np.mean([c[1] for c in shape_cost]):.1f} s for 2,000 items.",
             "- Denoiser: `train_caption_denoiser(steps=3000, hidden=512)` (the skip path is on for 768-value pictures).",
             "- Targets: overall AUROC >= 0.90, and >= 0.95 on every attribute the calibration says the model can verify.", ""]
    (out / "caption_quality.md").write_text("\n".join(lines))
    print(f"wrote {out / 'caption_quality.md'}")


if __name__ == "__main__":
    main()
