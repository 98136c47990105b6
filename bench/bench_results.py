"""Benchmark: the results store and `caption-eval plot --compare-all` at scale.

(a) Overhead of `save_results` per evaluation (target < 0.1 s) against a bare `json.dump` of the same
    document to a file, for a realistic evaluation: four minimal-pair tasks, a 10-class vision task with
    per-class stats and confusion matrix, and a long-context task with a 2,000-point loss curve.
(b) `--compare-all` over 500 saved runs: `discover_runs` + `plot_comparison` to a PNG (target <= 5 s), and
    loading time at 50 / 100 / 500 runs (per-run cost should stay flat: loading is linear), against a bare
    `json.load` loop over the same files.

Run: python bench/bench_results.py [--repeats 30] [--runs 500]
Writes bench/results/results.md.
"""
import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

from caption_evaluator.evaluation.results import build_results_doc, discover_runs, git_info, save_results  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "results.md"
T0 = datetime(2025, 10, 3, 9, 0, tzinfo=timezone.utc)


def acc(p, n):
    return {"accuracy": p, "samples": n, "correct": round(p * n), "stderr": (p * (1 - p) / n) ** 0.5}


def make_results(rng, points=2000):
    "A realistic evaluation: 4 pair tasks, a 10-class vision task, a long-context task with its curve."
    res = {t: acc(0.5 + 0.1 * rng.random(), 2000) for t in ("sblimp", "swuggy", "tstory", "sstory")}
    vision = acc(0.7 + 0.2 * rng.random(), 1797)
    vision["per_class"] = {c: {"accuracy": rng.random(), "support": 180, "correct": 150} for c in range(10)}
    vision["confusion_matrix"] = [[rng.randrange(200) for _ in range(10)] for _ in range(10)]
    res["vision_tiny"] = vision
    res["librilight"] = {"loss_8k": 2.4 + rng.random() / 10, "loss_16k": 2.3 + rng.random() / 10, "slope": -1.2e-5}
    step = 20000 // points
    curve = {"positions": list(range(0, 20000, step)), "losses": [2.9 - 1e-5 * step * i + rng.random() / 50 for i in range(points)],
             "slopes": {"overall": -1.2e-5, "early": -8e-6}}
    return res, {"librilight": curve}


def median_s(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_save(tmp, repeats):
    rng = random.Random(0)
    res, det = make_results(rng)
    config = {"paper_metrics": {"paper_metrics_eval": True, "paper_metrics_freq": 1000, "sblimp_max_pairs": 2000},
              "model": {"dim": 512, "layers": 12}, "seed": 0}
    doc = build_results_doc(res, config, model_type="ttt", detailed=det)
    out = tmp / "bare"
    out.mkdir()

    def bare():
        with open(out / "results.json", "w") as f:
            json.dump(doc, f, indent=2)

    save = lambda: save_results(res, config, tmp / "saved", model_type="ttt", detailed=det)
    bare(); save()                                    # warm-up (imports, page cache)
    t_bare, t_save, t_git = [], [], []
    for _ in range(repeats):                          # interleaved, medians
        t_bare.append(median_s(bare, 1))
        t_save.append(median_s(save, 1))
        t_git.append(median_s(git_info, 1))
    size = (out / "results.json").stat().st_size
    return {"bare": statistics.median(t_bare), "save": statistics.median(t_save), "git": statistics.median(t_git),
            "size": size, "max_save": max(t_save)}


def make_runs(root, n, rng, points):
    "n runs saved with save_results, one minute apart, alternating model types."
    for i in range(n):
        res, det = make_results(rng, points)
        save_results(res, {"seed": i}, root, model_type="ttt" if i % 2 else "baseline", detailed=det,
                     now=T0 + timedelta(minutes=i))


def time_plot(runs_dir, png, repeats):
    "Median (total, discover, plot) seconds of discover_runs + plot_comparison to a PNG."
    import matplotlib.pyplot as plt
    from caption_evaluator.views.run_plots import plot_comparison
    total, t_disc, t_plot, cpu = [], [], [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        runs = discover_runs(runs_dir)
        t1 = time.perf_counter()
        fig = plot_comparison(runs, output=png)
        t2 = time.perf_counter()
        cpu.append(time.process_time() - c)
        plt.close(fig)
        total.append(t2 - t); t_disc.append(t1 - t); t_plot.append(t2 - t1)
    return statistics.median(total), statistics.median(t_disc), statistics.median(t_plot), statistics.median(cpu)


def bench_compare_all(tmp, n_max, sizes, repeats, points):
    from caption_evaluator.views.run_plots import plot_comparison
    rng = random.Random(1)
    roots = {}
    t = time.perf_counter()
    for n in sizes:
        roots[n] = tmp / f"runs_{n}"
        make_runs(roots[n], n, rng, points)
    t_create = time.perf_counter() - t
    loading = {}
    for n in sizes:
        files = sorted(roots[n].rglob("results.json"))

        def bare():
            for f in files:
                with open(f) as fh:
                    json.load(fh)

        loading[n] = {"discover": median_s(lambda: discover_runs(roots[n]), repeats), "bare": median_s(bare, repeats)}
    png = tmp / "all_runs.png"
    total, t_disc, t_plot, cpu = time_plot(roots[n_max], png, repeats)
    # the CLI end to end, as a user runs it (includes interpreter start and imports)
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "caption_evaluator.cli", "plot", "--compare-all", str(roots[n_max]),
                        "--output", str(tmp / "cli.png")], capture_output=True, text=True)
    t_cli = time.perf_counter() - t
    assert p.returncode == 0, p.stderr
    t = time.perf_counter()
    probe = subprocess.run([sys.executable, "-c", "import sys, caption_evaluator.views.run_plots; print('torch' in sys.modules)"],
                           check=True, capture_output=True, text=True)
    t_import = time.perf_counter() - t
    torch_loaded = probe.stdout.strip() == "True"
    return {"create": t_create, "loading": loading, "total": total, "cpu": cpu, "discover": t_disc, "plot": t_plot, "cli": t_cli, "import": t_import, "torch_loaded": torch_loaded,
            "png": png.stat().st_size, "n_created": sum(sizes)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30, help="repeats for the save benchmark (medians)")
    ap.add_argument("--runs", type=int, default=500, help="runs for the --compare-all benchmark")
    ap.add_argument("--curve-points", type=int, default=200,
                    help="points per long-context curve in (b) (200: a position every 100 tokens up to 20k)")
    ap.add_argument("--stress-points", type=int, default=2000,
                    help="also time the 500-run figure with curves this long (0: skip)")
    args = ap.parse_args()
    sizes = sorted({50, 100, args.runs})
    warnings.simplefilter("error")                    # a skipped run would be a bug here
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        s = bench_save(tmp, args.repeats)
        print(f"(a) save_results {s['save']*1e3:.1f} ms vs bare json.dump {s['bare']*1e3:.1f} ms "
              f"-> {s['save']/s['bare']:.1f}x; of which git_info {s['git']*1e3:.1f} ms; file {s['size']/1024:.0f} KiB")
        c = bench_compare_all(tmp, args.runs, sizes, 3, args.curve_points)
        stress = None
        if args.stress_points:
            make_runs(tmp / "stress", args.runs, random.Random(2), args.stress_points)
            stress = time_plot(tmp / "stress", tmp / "stress.png", 1)
            print(f"(b) stress: {args.runs} runs with {args.stress_points}-point curves: discover {stress[1]:.2f} s + "
                  f"plot {stress[2]:.2f} s = {stress[0]:.2f} s (CPU {stress[3]:.2f} s)")
    per = {n: c["loading"][n]["discover"] / n for n in sizes}
    for n in sizes:
        l = c["loading"][n]
        print(f"(b) discover_runs {n:4d} runs: {l['discover']*1e3:7.1f} ms ({per[n]*1e3:.2f} ms/run; "
              f"{per[n]/per[sizes[0]]:.2f}x the per-run cost at {sizes[0]}), bare json.load loop {l['bare']*1e3:.1f} ms "
              f"-> {l['discover']/l['bare']:.2f}x")
    print(f"(b) --compare-all {args.runs} runs: discover {c['discover']:.2f} s + plot {c['plot']:.2f} s = {c['total']:.2f} s "
          f"(CPU {c['cpu']:.2f} s); "
          f"CLI end to end {c['cli']:.2f} s")

    import matplotlib
    import torch
    env = (f"Python {platform.python_version()}, torch {torch.__version__}, matplotlib {matplotlib.__version__}, "
           f"{platform.machine()}, {os.cpu_count()} CPU(s) shared; load average during the run "
           f"{load0:.1f} -> {os.getloadavg()[0]:.1f}")
    ok = lambda cond: "met" if cond else "missed"
    lines = [
        "# Results store benchmark", "",
        f"{env}. Command: `python bench/bench_results.py` (repeats {args.repeats}, {args.runs} runs).", "",
        "## (a) Saving one evaluation", "",
        "A realistic evaluation: 4 minimal-pair tasks, a 10-class vision task (per-class stats, confusion matrix), "
        f"a long-context task with a 2,000-point curve; results.json is {s['size']/1024:.0f} KiB. Medians of "
        f"{args.repeats} interleaved repeats.", "",
        "| contender | median (ms) | vs baseline |", "|---|---:|---:|",
        f"| baseline: bare `json.dump` of the same document | {s['bare']*1e3:.1f} | 1.00x |",
        f"| `save_results` (metadata, git, summary.txt, 2 atomic writes with fsync) | {s['save']*1e3:.1f} | {s['save']/s['bare']:.1f}x |",
        f"| of which `git_info` (one `git status` subprocess) | {s['git']*1e3:.1f} | |", "",
        f"- Overhead per evaluation: **{s['save']*1e3:.1f} ms** median, {s['max_save']*1e3:.1f} ms worst "
        f"(target < 100 ms: {ok(s['save'] < 0.1)}).", "",
        f"## (b) `--compare-all` over {args.runs} runs", "",
        f"Each run as in (a) but with a {args.curve_points}-point long-context curve; results.json written by "
        "`save_results`; a corrupt file would be skipped with a warning (none here). Medians of 3.", "",
        "| runs | `discover_runs` (ms) | per run (ms) | per run vs 50 runs | bare `json.load` loop (ms) | vs bare |",
        "|---:|---:|---:|---:|---:|---:|"]
    for n in sizes:
        l = c["loading"][n]
        lines.append(f"| {n} | {l['discover']*1e3:.1f} | {per[n]*1e3:.2f} | {per[n]/per[sizes[0]]:.2f}x | "
                     f"{l['bare']*1e3:.1f} | {l['discover']/l['bare']:.2f}x |")
    lines += ["",
              f"- `discover_runs` + `plot_comparison` to PNG over {args.runs} runs: **{c['total']:.2f} s** "
              f"(discover {c['discover']:.2f} s, plot {c['plot']:.2f} s; target <= 5 s: {ok(c['total'] <= 5)}); "
              f"CPU time of the process {c['cpu']:.2f} s (wall time above CPU time is other jobs sharing the 2 cores).",
              f"- The CLI end to end (`python -m caption_evaluator.cli plot --compare-all DIR --output F`, interpreter "
              f"start and imports included): {c['cli']:.2f} s, of which {c['import']:.2f} s is a fresh interpreter "
              f"importing `caption_evaluator.views.run_plots` (torch {'is' if c['torch_loaded'] else 'is not'} imported on this path).",
              f"- Loading is linear: the per-run cost at {args.runs} runs is {per[args.runs]/per[sizes[0]]:.2f}x the "
              f"per-run cost at {sizes[0]} runs.",
              *([f"- Stress: {args.runs} runs with {args.stress_points}-point curves (1M points overlaid): "
                 f"discover {stress[1]:.2f} s + plot {stress[2]:.2f} s = **{stress[0]:.2f} s** (CPU {stress[3]:.2f} s) "
                 f"(target <= 5 s: {ok(stress[0] <= 5)}); the time is matplotlib drawing the overlaid curves."] if stress else []),
              f"- Creating the {c['n_created']} runs with `save_results` took {c['create']:.1f} s "
              f"({c['create']/c['n_created']*1e3:.1f} ms per run)."]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
