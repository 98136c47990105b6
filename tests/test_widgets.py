"""Headless tests of the notebook views: drive the controls from Python (set values, click buttons) and check
what the views show and export against numbers computed independently from the saved files."""
import csv
import json
import math
from datetime import datetime, timezone
from pathlib import Path

import matplotlib
import matplotlib.image

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from caption_evaluator.tracking.aggregator import StreamingAggregator
from caption_evaluator.evaluation.models import CharLM, DigitsMLP
from caption_evaluator.evaluation.results import save_results
from caption_evaluator.evaluation.router import TextLMAdapter, VisionClassificationAdapter
from caption_evaluator.evaluation.tasks import build_eval_config
from caption_evaluator.views.widgets import CompareView, EvalView, ItemLossExplorer

PNG = b"\x89PNG\r\n\x1a\n"


def read_csv(path):
    with open(path, newline="") as f: return list(csv.DictReader(f))


def wilson(correct, n, z=1.96):
    p = correct / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


# ----------------------------------------------------------------------------------------------- EvalView
@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(1)
    return DigitsMLP()


def test_eval_view_vision_run_save_export(tmp_path, mlp):
    view = EvalView({"mlp": mlp}, {"vision": VisionClassificationAdapter(), "text": TextLMAdapter()},
                    results_dir=tmp_path / "runs", export_path=tmp_path / "out" / "m")
    view.task.value = "vision_tiny"
    assert view.adapter.value == "vision"  # picked by the task's modality
    view.max_samples.value = 100
    view.run_button.click()
    assert "Error" not in view.status.value, view.status.value

    cfg = build_eval_config("vision_tiny", max_samples=100)
    with torch.no_grad():
        batches = list(cfg.dataloader())
        correct = sum(int((mlp(b["inputs"]).argmax(-1) == b["labels"]).sum()) for b in batches)
    assert (view.progress.value, view.progress.max) == (len(batches), len(batches))
    rows = {r["metric"]: r for r in view.rows}
    assert rows["accuracy"]["value"] == pytest.approx(correct / 100)
    assert (rows["accuracy"]["ci_low"], rows["accuracy"]["ci_high"]) == pytest.approx(wilson(correct, 100))
    assert f"<td>{correct / 100:.4g}</td>" in view.table.value
    assert view.table.value.count("<tr>") == len(view.rows) + 1
    assert bytes(view.figure.value).startswith(PNG)
    assert view.save_button.disabled is False

    view.model_type.value = "tiny mlp"
    view.save_button.click()
    doc = json.loads((view.run_dir / "results.json").read_text())
    assert view.run_dir.parent == tmp_path / "runs" and view.run_dir.name.endswith("_tiny_mlp")
    assert doc["metadata"]["model_type"] == "tiny mlp"
    assert doc["results"]["vision_tiny"]["accuracy"] == pytest.approx(correct / 100)
    assert doc["results"]["vision_tiny"]["samples"] == 100
    assert (view.run_dir / "summary.txt").exists()

    view.export_csv_button.click()
    view.export_json_button.click()
    exported = {r["metric"]: r for r in read_csv(tmp_path / "out" / "m.csv")}
    assert float(exported["accuracy"]["value"]) == pytest.approx(doc["results"]["vision_tiny"]["accuracy"])
    assert float(exported["top3_accuracy"]["value"]) == pytest.approx(doc["results"]["vision_tiny"]["top3_accuracy"])
    js = json.loads((tmp_path / "out" / "m.json").read_text())
    assert js["task"] == "vision_tiny" and js["model"] == "mlp"
    assert js["metrics"]["per_class"] == doc["results"]["vision_tiny"]["per_class"]


def test_eval_view_text_task_perplexity(tmp_path):
    torch.manual_seed(0)
    lm = CharLM()
    view = EvalView({"lm": lm}, {"vision": VisionClassificationAdapter(), "text": TextLMAdapter()},
                    tasks=["vision_tiny", "text_tiny"], results_dir=tmp_path)
    view.task.value = "text_tiny"
    assert view.adapter.value == "text"
    view.max_samples.value = 12
    view.run_button.click()
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for b in build_eval_config("text_tiny", max_samples=12).dataloader():
            logits = lm(b["input_ids"])
            nll += float(F.cross_entropy(logits.flatten(0, 1).float(), b["labels"].flatten(), ignore_index=-100, reduction="sum"))
            tokens += int((b["labels"] != -100).sum())
    rows = {r["metric"]: r["value"] for r in view.rows}
    assert rows["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-4)


def test_eval_view_errors_go_to_status(mlp):
    view = EvalView(mlp, VisionClassificationAdapter())
    assert list(view.models) == ["DigitsMLP"] and list(view.adapters) == ["VisionClassificationAdapter"]
    view.export_csv_button.disabled = False
    view.export_csv_button.click()
    assert "Run evaluation" in view.status.value
    view.task.value = "vision_tiny"
    view.max_samples.value = -3
    view.run_button.click()
    assert "max_samples" in view.status.value
    with pytest.raises(ValueError, match="models"): EvalView({}, VisionClassificationAdapter())


# -------------------------------------------------------------------------------------------- CompareView
def _save(root, model_type, correct, n, day, lc=None):
    res = {"sblimp": {"accuracy": correct / n, "samples": n, "correct": correct}}
    if lc: res["librilight"] = {"loss_8k": lc[0], "loss_16k": lc[1]}
    return save_results(res, results_dir=root, model_type=model_type, now=datetime(2025, 3, day, 9, 0, tzinfo=timezone.utc))


def test_compare_view_filter_refresh_export(tmp_path):
    root = tmp_path / "evaluation_results"
    _save(root, "ttt", 1100, 2000, 1, lc=(2.5, 2.4))
    _save(root, "baseline", 1000, 2000, 2, lc=(2.7, 2.6))
    _save(root, "ttt", 1150, 2000, 3)
    bad = root / "run_broken"
    bad.mkdir()
    (bad / "results.json").write_text('{"schema": "caption_evaluator/results@1", "resu')  # cut short

    view = CompareView(root, export_path=tmp_path / "runs.csv")
    assert len(view.runs.options) == 3 and len(view.runs.value) == 3
    assert "skipped 1" in view.status.value
    assert set(view.model_type.options) == {"(all)", "ttt", "baseline"}
    assert bytes(view.figure.value).startswith(PNG)
    assert view.table.value.count("<tr>") == 4

    view.model_type.value = "ttt"
    assert len(view.runs.options) == 2 and len(view.runs.value) == 2
    panels = {ax.get_label(): ax for ax in view.fig.axes}
    assert set(panels) >= {"benchmarks", "long_context"}
    legend = [t.get_text() for t in view.fig.legends[0].get_texts()]
    assert len(legend) == 2 and all(t.startswith("ttt") for t in legend)

    view.runs.value = view.runs.options[:1]
    view.export_button.click()
    rows = read_csv(tmp_path / "runs.csv")
    assert len(rows) == 1

    saved = [json.loads(p.read_text()) for p in sorted(root.glob("run_*_ttt*/results.json"))]
    first = saved[0]["results"]["sblimp"]
    assert float(rows[0]["sblimp"]) == pytest.approx(first["accuracy"])
    assert (float(rows[0]["sblimp_ci_low"]), float(rows[0]["sblimp_ci_high"])) == pytest.approx(wilson(first["correct"], first["samples"]))
    assert float(rows[0]["librilight.loss_8k"]) == pytest.approx(2.5)

    _save(root, "ttt", 1200, 2000, 4)  # a new run arrives
    view.refresh_button.click()
    assert len(view.runs.options) == 3
    assert len(view.runs.value) == 2  # the kept selection plus the new run
    view.export_button.click()
    rows = read_csv(tmp_path / "runs.csv")
    assert [float(r["sblimp"]) for r in rows] == pytest.approx([0.55, 0.6])

    view.runs.value = ()
    assert view.fig is None and "no runs selected" in view.table.value
    view.export_button.click()
    assert "nothing selected" in view.status.value


def test_compare_view_missing_dir(tmp_path):
    with pytest.raises(OSError, match="results_dir"): CompareView(tmp_path / "nope")


# --------------------------------------------------------------------------------------- ItemLossExplorer
@pytest.fixture
def snapshots(tmp_path):
    "Two snapshots of 40 items whose keys are real PNG files; raw per-epoch losses returned for checks."
    rng = np.random.default_rng(3)
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    keys = []
    for i in range(40):
        p = img_dir / f"{i:03d}.png"
        matplotlib.image.imsave(p, rng.random((6, 6)), cmap="gray")
        keys.append(str(p))
    losses = rng.gamma(2.0, 0.2, (8, 40))
    paths = []
    for stop, step in ((4, 100), (8, 200)):
        agg = StreamingAggregator()
        for e in range(stop): agg.update("train", keys, torch.tensor(losses[e], dtype=torch.float32), step=e)
        paths.append(agg.save_json(tmp_path / "snaps", "job", step))
    return keys, losses, paths


def test_item_explorer_sort_filter_page_export(tmp_path, snapshots):
    keys, losses, (snap_a, snap_b) = snapshots
    captions = {k: ("cat" if i % 3 == 0 else "dog") for i, k in enumerate(keys)}
    ex = ItemLossExplorer(snap_b, captions=captions, page_size=5, export_path=tmp_path / "view")
    stats = json.loads(Path(snap_b).read_text())["datasets"]["train"]["item_stats"]

    by_avg = sorted(stats, key=lambda k: -stats[k]["average_loss"])
    assert [r["item"] for r in ex.page_rows()] == by_avg[:5]
    assert ex.page.max == 8
    assert len(ex.thumbnails) == 5 and all(bytes(t.value).startswith(PNG) for t in ex.thumbnails)
    assert ex.table.value.count("<tr>") == 6

    ex.sort_by.value = "std_loss"
    ex.search.value = "cat"
    by_std = [k for k in sorted(stats, key=lambda k: -stats[k]["std_loss"]) if captions[k] == "cat"]
    assert [r["item"] for r in ex.view_rows()] == by_std
    assert ex.page.max == math.ceil(len(by_std) / 5)
    ex.next_button.click()
    assert [r["item"] for r in ex.page_rows()] == by_std[5:10]
    assert ex.page_rows()[0]["rank"] == 6

    ex.descending.value = False
    ex.min_value.value = "0.3"
    expected = [k for k in sorted(stats, key=lambda k: stats[k]["std_loss"]) if captions[k] == "cat" and stats[k]["std_loss"] >= 0.3]
    assert [r["item"] for r in ex.view_rows()] == expected
    assert ex.page.value == 1

    ex.export_csv_button.click()
    ex.export_json_button.click()
    rows = read_csv(tmp_path / "view.csv")
    assert [r["item"] for r in rows] == expected
    assert [float(r["std_loss"]) for r in rows] == pytest.approx([stats[k]["std_loss"] for k in expected])
    assert all(r["caption"] == "cat" for r in rows)
    js = json.loads((tmp_path / "view.json").read_text())
    assert js["sort_by"] == "std_loss" and js["min_value"] == 0.3 and js["step"] == 200
    assert [r["average_loss"] for r in js["items"]] == pytest.approx([stats[k]["average_loss"] for k in expected])


def test_item_explorer_compare_snapshots(snapshots):
    keys, losses, (snap_a, snap_b) = snapshots
    ex = ItemLossExplorer(snap_b)  # finds the job's other snapshot beside it
    assert [ex.snapshot_a.value, ex.snapshot_b.value] == [Path(snap_a).name, Path(snap_b).name]
    ex.diff_k.value = 4
    ex.diff_button.click()
    a = json.loads(Path(snap_a).read_text())["datasets"]["train"]["item_stats"]
    b = json.loads(Path(snap_b).read_text())["datasets"]["train"]["item_stats"]
    delta = {k: b[k]["average_loss"] - a[k]["average_loss"] for k in a}
    worse = sorted((k for k in delta if delta[k] > 0), key=lambda k: -delta[k])[:4]
    better = sorted((k for k in delta if delta[k] < 0), key=lambda k: delta[k])[:4]
    assert [e["item"] for e in ex.diff["regressed"]] == worse
    assert [e["item"] for e in ex.diff["improved"]] == better
    assert ex.diff_table.value.count("<tr>") == 1 + len(worse) + len(better)
    assert bytes(ex.diff_figure.value).startswith(PNG)
    panels = {ax.get_label(): ax for ax in ex.diff_fig.axes}
    assert [p.get_width() for p in panels["regressed"].patches] == pytest.approx([delta[k] for k in worse])


def test_item_explorer_aggregator_and_tensor_images():
    agg = StreamingAggregator()
    agg.update("val", ["a", "b", "c"], torch.tensor([0.5, 2.0, 1.0]))
    agg.update("train", ["x"], torch.tensor([1.0]))
    with pytest.raises(ValueError, match="dataset"): ItemLossExplorer(agg)
    ex = ItemLossExplorer(agg, dataset="val", images={"b": torch.rand(3, 8, 8), "c": np.zeros(64)})
    assert [r["item"] for r in ex.page_rows()] == ["b", "c", "a"]
    assert len(ex.thumbnails) == 2
    assert ex.diff_button.disabled
    ex.diff_button.disabled = False
    ex.diff_button.click()
    assert "snapshots" in ex.status.value
