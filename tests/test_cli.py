"""`caption-eval` as users run it: real subprocesses of `python -m caption_evaluator.cli` and of the installed
`caption-eval` script, on runs written by `save_results` into temporary folders."""
import gzip
import json
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from caption_evaluator.evaluation.results import save_results

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SCRIPT = shutil.which("caption-eval") or str(Path(sys.executable).parent / "caption-eval")


def cli(*args, script=False, cwd=None, timeout=180):
    "Run the CLI in a subprocess; return (exit code, stdout, stderr)."
    cmd = [SCRIPT] if script else [sys.executable, "-m", "caption_evaluator.cli"]
    p = subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def _acc(p, n=400):
    return {"accuracy": p, "samples": n, "correct": round(p * n)}


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    "Three runs (two in the top folder, one in a sub-folder) plus a corrupt and a foreign results.json."
    root = tmp_path_factory.mktemp("evaluation_results")
    at = lambda h: datetime(2025, 10, 3, h, tzinfo=timezone.utc)
    curve = {"positions": [0, 1000, 2000], "losses": [2.9, 2.7, 2.6], "slopes": {"overall": -1.5e-4}}
    save_results({"sblimp": _acc(0.50), "swuggy": _acc(0.60), "librilight": {"loss_8k": 2.5, "slope": -1.5e-4}},
                 results_dir=root, model_type="baseline", detailed={"librilight": curve}, now=at(9))
    save_results({"sblimp": _acc(0.55), "swuggy": _acc(0.70)}, results_dir=root, model_type="ttt", now=at(10))
    save_results({"sblimp": _acc(0.65)}, results_dir=root / "ablation", model_type="ttt", now=at(11))
    (root / "crashed").mkdir()
    (root / "crashed" / "results.json").write_text('{"schema": "caption_evaluator/results@1", "resu')
    (root / "foreign").mkdir()
    (root / "foreign" / "results.json").write_text('{"loss": 1.0}')
    return root


@pytest.fixture(scope="module")
def run_dirs(results_dir):
    return sorted(p.parent for p in results_dir.rglob("results.json") if p.parent.name.startswith("run_"))


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    "An item-stats snapshot (schema caption_evaluator/item_stats@1) written by hand."
    losses = {"train": [0.2, 3.5, 0.9, 1.7, 0.05], "val": [0.4, 0.3]}
    doc = {"schema": "caption_evaluator/item_stats@1", "job": "cli_test", "step": 120,
           "created": "2026-11-22T10:00:00+00:00", "datasets": {}}
    for name, ls in losses.items():
        doc["datasets"][name] = {
            "summary": {"items": len(ls), "updates": 3 * len(ls), "mean_loss": sum(ls) / len(ls), "nonfinite": 0},
            "item_stats": {f"{name}/{i:03d}.png": {"average_loss": l, "min_loss": l, "max_loss": l, "count": 3,
                                                   "std_loss": 0.0, "last_loss": l, "last_step": 120}
                           for i, l in enumerate(ls)}}
    path = tmp_path_factory.mktemp("snapshots") / "cli_test_000000120.json"
    path.write_text(json.dumps(doc))
    return path


# --- help and usage ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("sub", [[], ["plot"], ["runs"], ["items"], ["demo"]])
def test_help_for_every_command(sub):
    code, out, err = cli(*sub, "--help")
    assert code == 0, err
    assert out.startswith("usage: caption-eval") and (not sub or sub[0] in out.splitlines()[0])


def test_installed_script_matches_module():
    code, out, _ = cli("--help", script=True)
    assert code == 0
    assert out == cli("--help")[1]


@pytest.mark.parametrize("args", [[], ["frobnicate"], ["plot"], ["plot", "--run", "a", "--compare", "b"],
                                  ["runs"], ["items", "x.json", "-k", "0"], ["demo", "--epochs", "many"]])
def test_usage_errors_exit_2(args):
    code, out, err = cli(*args)
    assert code == 2
    assert "usage:" in err and out == ""


def test_figure_extension_is_checked(run_dirs, tmp_path):
    code, _, err = cli("plot", "--run", run_dirs[0], "--output", tmp_path / "fig.jpg")
    assert code == 2 and ".png, .svg or .pdf" in err
    assert not (tmp_path / "fig.jpg").exists()


# --- runs / --list-runs --------------------------------------------------------------------------------------

def test_runs_table(results_dir):
    code, out, err = cli("runs", results_dir)
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].split() == ["run", "time", "model", "type", "sblimp", "swuggy", "avg"]
    body = [l.split() for l in lines[2:]]
    assert len(body) == 3                                     # the corrupt and the foreign file are skipped...
    assert [r[0][:19] for r in body] == ["run_20251003_090000", "run_20251003_100000", "run_20251003_110000"]
    assert [r[3] for r in body] == ["baseline", "ttt", "ttt"]
    assert body[0][-3:] == ["0.5000", "0.6000", f"{(0.50 + 0.60) / 2:.4f}"]
    assert body[2][-3:] == ["0.6500", "-", "0.6500"]
    warnings = [l for l in err.splitlines() if l.startswith("caption-eval: warning:")]
    assert len(warnings) == 2                                 # ...each named in a warning
    assert any("crashed" in w for w in warnings) and any("foreign" in w for w in warnings)


def test_runs_json_lines(results_dir):
    code, out, _ = cli("runs", results_dir, "--json")
    assert code == 0
    rows = [json.loads(l) for l in out.splitlines()]
    assert [r["model_type"] for r in rows] == ["baseline", "ttt", "ttt"]
    assert rows[1]["main_metrics"] == {"sblimp": 0.55, "swuggy": 0.70}
    assert rows[2]["path"].startswith("ablation/")
    assert not any(Path(r["path"]).is_absolute() for r in rows)


def test_list_runs_is_the_runs_table(results_dir):
    code, out, _ = cli("plot", "--compare-all", results_dir, "--list-runs", script=True)
    assert code == 0
    assert out == cli("runs", results_dir)[1]


def test_no_runs_exit_1(tmp_path):
    for args in (["runs", tmp_path], ["plot", "--compare-all", tmp_path, "--output", tmp_path / "x.png"],
                 ["runs", tmp_path / "missing"]):
        code, out, err = cli(*args)
        assert code == 1 and out == ""
        assert len(err.strip().splitlines()) == 1 and err.startswith("caption-eval: error:")
    assert not (tmp_path / "x.png").exists()


# --- plot --------------------------------------------------------------------------------------------------

def test_plot_single_run_default_output(run_dirs):
    code, out, err = cli("plot", "--run", run_dirs[0])
    assert code == 0, err
    fig = run_dirs[0] / "single_run_analysis.png"
    assert out.strip() == f"wrote {fig}"
    assert fig.stat().st_size > 1000 and fig.read_bytes()[:8] == PNG_MAGIC


def test_plot_single_run_results_file_to_svg(run_dirs, tmp_path):
    out_svg = tmp_path / "run.svg"
    code, _, err = cli("plot", "--run", run_dirs[0] / "results.json", "--output", out_svg, script=True)
    assert code == 0, err
    text = out_svg.read_text()
    assert "<svg" in text[:2000] and text.rstrip().endswith("</svg>")


def test_plot_compare(run_dirs, tmp_path):
    out_pdf = tmp_path / "cmp.pdf"
    code, _, err = cli("plot", "--compare", *run_dirs[:2], "--output", out_pdf)
    assert code == 0, err
    assert out_pdf.read_bytes()[:5] == b"%PDF-"


def test_plot_compare_all(results_dir, tmp_path):
    out_png = tmp_path / "all_runs.png"
    code, out, err = cli("plot", "--compare-all", results_dir, "--output", out_png, script=True)
    assert code == 0, err
    assert out.strip() == f"wrote {out_png}"
    assert out_png.stat().st_size > 1000 and out_png.read_bytes()[:8] == PNG_MAGIC
    assert "crashed" in err                                   # skipped file reported, figure still made


def test_plot_unreadable_inputs_exit_1(results_dir, tmp_path):
    code, _, err = cli("plot", "--run", tmp_path / "nope")
    assert code == 1 and "no results file" in err
    code, _, err = cli("plot", "--run", results_dir / "crashed")
    assert code == 1 and "not valid JSON" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("plot", "--compare", results_dir / "foreign", tmp_path / "nope", "--output", tmp_path / "c.png")
    assert code == 1 and "foreign" in err


# --- items -------------------------------------------------------------------------------------------------

def test_items_worst_first(snapshot):
    pytest.importorskip("caption_evaluator.tracking.aggregator")
    code, out, err = cli("items", snapshot, "-k", "3", "--dataset", "train")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].startswith("train:") and "step 120" in lines[0]
    assert lines[1] == "ranked by average_loss (highest first)"
    ranked = [l.split() for l in lines[4:]]
    assert [r[1] for r in ranked] == ["train/001.png", "train/003.png", "train/002.png"]   # 3.5 > 1.7 > 0.9
    assert [float(r[2]) for r in ranked] == [3.5, 1.7, 0.9]


def test_items_every_dataset_and_gzip(snapshot, tmp_path):
    pytest.importorskip("caption_evaluator.tracking.aggregator")
    gz = tmp_path / "snap.json.gz"
    gz.write_bytes(gzip.compress(snapshot.read_bytes()))
    code, out, err = cli("items", gz, script=True)
    assert code == 0, err
    heads = [l for l in out.splitlines() if l.startswith(("train:", "val:"))]
    assert [h.split(":")[0] for h in heads] == ["train", "val"]
    assert "val/000.png" in out and out.count("train/") == 5


def test_items_by_any_score_from_a_real_snapshot(tmp_path):
    "A snapshot written by the aggregator with named values, ranked by `--by` in a real subprocess."
    torch = pytest.importorskip("torch")
    from caption_evaluator.tracking.aggregator import StreamingAggregator
    agg = StreamingAggregator()
    margins = {"a": [2.0, 1.0], "b": [-3.0, -1.0], "c": [0.5, 0.7]}
    for step in range(2):
        agg.update("train", list(margins), torch.tensor([0.1, 0.2, 0.3]), step=step,
                   values={"margin": torch.tensor([m[step] for m in margins.values()])})
    path = agg.save_json(tmp_path, "scores", 2)
    code, out, err = cli("items", path, "--by", "aum", script=True)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[1] == "ranked by aum (lowest first)"
    ranked = sorted(margins, key=lambda k: sum(margins[k]) / 2)
    assert [l.split()[1] for l in lines[4:]] == ranked and float(lines[4].split()[2]) == -2.0
    code, out, err = cli("items", path, "--by", "values.margin.max")
    assert code == 0 and [l.split()[1] for l in out.splitlines()[4:]] == sorted(margins, key=lambda k: -max(margins[k]))
    code, _, err = cli("items", path, "--by", "tnorm_average_loss")
    assert code == 1 and "aum" in err and len(err.strip().splitlines()) == 1


def test_items_errors_exit_1(snapshot, tmp_path):
    pytest.importorskip("caption_evaluator.tracking.aggregator")
    code, out, err = cli("items", snapshot, "--dataset", "test")
    assert code == 1 and "train" in err and len(err.strip().splitlines()) == 1
    assert out == "", "nothing is printed before the error"
    code, _, err = cli("items", tmp_path / "missing.json")
    assert code == 1 and "missing.json" in err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    code, _, err = cli("items", bad)
    assert code == 1 and err.startswith("caption-eval: error:")


def test_items_of_a_folder_opens_its_latest_snapshot(snapshot, tmp_path):
    "A run folder: snapshots in item_stats/, next to files that are not snapshots and an interrupted save's temp file."
    run = tmp_path / "run"
    (run / "item_stats").mkdir(parents=True)
    doc = json.loads(snapshot.read_text())
    for step, worst in ((40, "train/000.png"), (120, "train/001.png")):
        (run / "item_stats" / f"job_{step:09d}.json").write_text(json.dumps({**doc, "step": step}))
    (run / "item_stats" / ".job_000000500.json.ab12cd34.tmp").write_text("{half")
    (run / "demo_summary.json").write_text("{}")
    for folder in (run, run / "item_stats"):
        code, out, err = cli("items", folder, "-k", "1")
        assert code == 0, err
        assert str(run / "item_stats" / "job_000000120.json") in err and out.startswith("train:"), (out, err)   # the note on stderr, the table alone on stdout
    code, _, err = cli("items", tmp_path / "missing_folder")
    assert code == 1 and "missing_folder" in err
    (tmp_path / "empty").mkdir()
    code, _, err = cli("items", tmp_path / "empty")
    assert code == 1 and "holds no snapshot" in err


def test_plot_run_finds_the_run_below_a_folder_and_names_a_wrong_file(results_dir, tmp_path):
    code, out, err = cli("plot", "--run", results_dir / "ablation", "--output", tmp_path / "one.png")
    assert code == 0 and (tmp_path / "one.png").read_bytes()[:8] == PNG_MAGIC, err
    assert "newest of 1 run" in err
    png = tmp_path / "one.png"
    code, _, err = cli("plot", "--run", png)
    assert code == 1 and "is a .png file, not a results file" in err and str(png) in err


def test_output_cut_short_by_the_reader_is_not_an_error(snapshot, tmp_path):
    "`caption-eval items ... | head`: the pipe closes while 20,000 rows are still being written."
    doc = json.loads(snapshot.read_text())
    row = next(iter(doc["datasets"]["train"]["item_stats"].values()))
    doc["datasets"] = {"train": {**doc["datasets"]["train"], "item_stats": {f"img/{i:05d}.png": row for i in range(20_000)}}}
    big = tmp_path / "big_000000001.json"
    big.write_text(json.dumps(doc))
    p = subprocess.run(f'"{sys.executable}" -m caption_evaluator.cli items "{big}" -k 20000 | head -c 10', shell=True,
                       capture_output=True, text=True, timeout=120)
    assert len(p.stdout) == 10
    assert p.stderr == "", p.stderr


# --- demo --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["--noise", "--plant"])
def test_demo_bad_share_exit_2(tmp_path, flag):
    code, _, err = cli("demo", flag, "1.5", "--output-dir", tmp_path)
    assert code == 2 and flag in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())                      # refused before any run folder is made


def test_list_runs_with_single_run_exit_2(run_dirs):
    code, out, err = cli("plot", "--run", run_dirs[0], "--list-runs")
    assert code == 2 and "--list-runs" in err and out == ""


def test_caption_demo_runs(tmp_path):
    out_dir = tmp_path / "demo_output"
    code, out, err = cli("demo", "digits", "--output-dir", out_dir, "--steps", "150", "--quiet", timeout=300)
    assert code == 0, err
    run_dir = Path(out.strip())
    assert run_dir.parent == out_dir and run_dir.is_dir()
    assert {p.name for p in run_dir.glob("*.png")} == {"worst_captions.png", "loss_by_timestep.png", "caption_scores.png"}
    snapshot = next(run_dir.glob("captions_*.json"))
    code, out, err = cli("items", snapshot, "--dataset", "probe", "--by", "swap_margin", "-k", "3")
    assert code == 0 and "ranked by swap_margin (highest first)" in out, err


def test_demo_runs(tmp_path):
    pytest.importorskip("caption_evaluator.demos.label_noise")
    out_dir = tmp_path / "demo_output"
    code, out, err = cli("demo", "labels", "--output-dir", out_dir, "--epochs", "1", "--seed", "1", timeout=300)
    assert code == 0, err
    assert any(out_dir.rglob("results.json")), "the demo saves at least one run"
