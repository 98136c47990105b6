"""Benchmark: which per-item score finds wrong labels, from one training run, against cleanlab.

Data: the training part of `vision_tiny`'s split of scikit-learn's digits (1,438 images), labels corrupted
class-conditionally (`corrupt_labels(kind="classcond")`: in every class 30 % of the items get the label of
its look-alike, 1<->7, 3<->8, 4<->9, 5<->6, 0<->2), 3 seeds. Model and training: the demo's (`DigitsMLP`,
hidden 64, Adam lr 3e-3, batch 64, 20 epochs), every item's loss, margin, p(gold) and correctness recorded
each epoch with `classification_record` and a `StreamingAggregator`.

Scores from that one run: mean loss, area under the margin (AUM), data-maps confidence, variability and
correctness, forgetting events (never learned first). Baseline, in the same process: cleanlab's label
quality scores (self-confidence and normalised margin) on 5-fold cross-validated probabilities of the same
model trained the same way (5 more training runs). Metrics: AUROC and precision@k at k = number of wrong
labels (ties at the k-th score shared), mean and range over seeds; secondary settings (uniform noise,
10 % class-conditional) for contrast.

Run: python bench/bench_label_noise.py [--seeds 3] [--epochs 20]
Writes bench/results/label_noise.md and bench/results/label_noise.png.
"""
import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from caption_evaluator.tracking.aggregator import StreamingAggregator
from caption_evaluator.demos.label_noise import demo_data
from caption_evaluator.noise import detection_table, label_noise_report
from caption_evaluator.tracking.losses import classification_record
from caption_evaluator.evaluation.models import DigitsMLP

RESULTS = Path(__file__).parent / "results"
SCORES = ("average_loss", "aum", "confidence", "variability", "correctness", "forgetting")
TARGET_AUROC, TARGET_PRECISION = 0.97, 0.90


def train(inputs, labels, seed, epochs, agg=None, keys=None, lr=3e-3, batch=64):
    "The demo's training; per-item losses and training dynamics go to `agg` (slots `keys`) when given."
    torch.manual_seed(seed)
    model = DigitsMLP(hidden=64)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for step in range(epochs):
        for b in torch.randperm(len(labels), generator=gen).split(batch):
            rec = classification_record(model(inputs[b]), labels[b])
            opt.zero_grad(); rec.loss.mean().backward(); opt.step()
            if agg is not None: agg.update("train", keys[b], rec.loss.detach(), step=step, values=rec.values)
    return model


def cross_val_probs(inputs, labels, seed, epochs, folds=5):
    "Out-of-fold predicted probabilities of the same model, trained the same way on the other folds."
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(10_000 + seed))
    probs = torch.zeros(len(labels), 10)
    for part in perm.chunk(folds):
        rest = perm[~torch.isin(perm, part)]
        model = train(inputs[rest], labels[rest], seed, epochs)
        with torch.no_grad(): probs[part] = torch.softmax(model(inputs[part]), 1)
    return probs.numpy()


def one_setting(noise, kind, seed, epochs, with_cleanlab):
    "{score: (auroc, precision@k)} for one corrupted training set."
    data = demo_data(noise, seed, kind)
    keys = [str(i) for i in range(len(data.keys))]
    bad = {str(i) for i in data.corrupted.tolist()}
    agg = StreamingAggregator()
    slots = agg.register_items("train", keys)
    t0 = time.process_time()
    train(data.inputs, data.labels, seed, epochs, agg, slots)
    table = detection_table(agg.item_stats("train"), bad, SCORES)    # the demo's table: each score signed so higher = more suspect
    out = {by: (r["auroc"], r["precision_at_k"]) for by, r in table.items()}
    out["_train_s"] = time.process_time() - t0
    if with_cleanlab:
        from cleanlab.rank import get_label_quality_scores
        t0 = time.process_time()
        probs = cross_val_probs(data.inputs, data.labels, seed, epochs)
        for method in ("self_confidence", "normalized_margin"):
            q = get_label_quality_scores(data.labels.numpy(), probs, method=method)
            r = label_noise_report(dict(zip(keys, (-q).tolist())), bad)
            out[f"cleanlab {method} (5-fold CV)"] = (r["auroc"], r["precision_at_k"])
        out["_cleanlab_s"] = time.process_time() - t0
    return out


def summarise(runs):
    "{score: (mean auroc, min, max, mean precision, min, max)} over seeds."
    names = [n for n in runs[0] if not n.startswith("_")]
    return {n: (np.mean([r[n][0] for r in runs]), min(r[n][0] for r in runs), max(r[n][0] for r in runs),
                np.mean([r[n][1] for r in runs]), min(r[n][1] for r in runs), max(r[n][1] for r in runs)) for n in names}


def table(summary):
    lines = ["| score | AUROC (mean) | AUROC range | precision@k (mean) | precision@k range |", "|---|---:|---:|---:|---:|"]
    for n, (a, alo, ahi, p, plo, phi) in summary.items():
        lines.append(f"| {n} | {a:.4f} | {alo:.4f}–{ahi:.4f} | {p:.3f} | {plo:.3f}–{phi:.3f} |")
    return lines


def figure(summary, path):
    "AUROC and precision@k of every score with the seeds' range (the main setting)."
    from matplotlib.figure import Figure
    names = list(summary)
    fig = Figure(figsize=(8.5, 0.55 * len(names) + 1.6), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(names))[::-1]
    for off, col, lab, i in ((0.2, "tab:blue", "AUROC", 0), (-0.2, "tab:orange", "precision@k", 3)):
        m = np.array([summary[n][i] for n in names])
        lo, hi = np.array([summary[n][i + 1] for n in names]), np.array([summary[n][i + 2] for n in names])
        ax.barh(y + off, m, height=0.38, color=col, label=lab, xerr=np.vstack([m - lo, hi - m]), capsize=2)
    ax.axvline(TARGET_AUROC, color="tab:blue", ls="--", lw=1, label=f"target AUROC {TARGET_AUROC}")
    ax.axvline(TARGET_PRECISION, color="tab:orange", ls=":", lw=1, label=f"target precision@k {TARGET_PRECISION}")
    ax.set_yticks(y, names)
    ax.set_xlim(0.5, 1.0)
    ax.set(xlabel="finding the wrong labels (mean over seeds; whiskers: range)",
           title="Digits, 30 % class-conditional label noise: scores from one training run vs cleanlab")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=4, fontsize=8, frameon=False)
    fig.savefig(path, dpi=100)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--out", default=str(RESULTS))
    a = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    main_runs = [one_setting(0.3, "classcond", s, a.epochs, True) for s in range(a.seeds)]
    main_sum = summarise(main_runs)
    extra = {label: summarise([one_setting(n, k, s, a.epochs, False) for s in range(a.seeds)])
             for label, n, k in (("30 % uniform noise", 0.3, "uniform"), ("10 % class-conditional noise", 0.1, "classcond"))}
    for n, v in main_sum.items(): print(f"{n:40s} AUROC {v[0]:.4f}  precision@k {v[3]:.3f}")
    met = [n for n, v in main_sum.items() if not n.startswith("cleanlab") and v[0] >= TARGET_AUROC and v[3] >= TARGET_PRECISION]
    train_s = np.mean([r["_train_s"] for r in main_runs])
    cl_s = np.mean([r["_cleanlab_s"] for r in main_runs])
    figure(main_sum, out / "label_noise.png")
    lines = ["# Label-noise detection benchmark", "",
             f"Digits (`vision_tiny`'s 1,438 training images), {a.seeds} seeds, the demo's MLP trained {a.epochs} epochs; "
             f"torch {torch.__version__}, {platform.machine()}, 1 thread. Command: `python bench/bench_label_noise.py`", "",
             "## 30 % class-conditional noise (each digit's look-alike: 1↔7, 3↔8, 4↔9, 5↔6, 0↔2)", "",
             *table(main_sum), "",
             f"- Target: AUROC >= {TARGET_AUROC} and precision@k >= {TARGET_PRECISION} from one training run. Met by: "
             f"**{', '.join(met) if met else 'none'}**.",
             f"- Cost: the tracked run takes {train_s:.1f} s of CPU; cleanlab's 5-fold cross-validated probabilities need "
             f"5 more trainings ({cl_s:.1f} s).",
             "- k = the number of wrong labels, so precision@k = recall@k; items tied with the k-th score share the last places "
             "(correctness takes few values).",
             "- Why one run beats cross-validation here: the look-alike pairs make 30 % of a class's labels consistent with "
             "the pair's other class, so a held-out model learns the swap and gives the wrong label a high probability; "
             "the training dynamics (margins before memorisation, how often an item is predicted as its label) see the "
             "item fight its label throughout training.", ""]
    for label, s in extra.items(): lines += [f"## {label} (contrast)", "", *table(s), ""]
    lines += ["Figure: `bench/results/label_noise.png` (shown on the Benchmarks page).", ""]
    (out / "label_noise.md").write_text("\n".join(lines))
    print(f"wrote {out / 'label_noise.md'}")


if __name__ == "__main__":
    main()
