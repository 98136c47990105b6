"""Loggers write files that the trackers' own readers understand.

TensorBoard: the event file is read back with TensorBoard's `EventAccumulator`.
W&B: an offline run (WANDB_MODE=offline) is written to a temporary WANDB_DIR and its `.wandb` record file
is decoded with wandb's own protobuf `Record` messages; history rows must hold the logged values.
"""
import io
import json
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from caption_evaluator.loggers import (ConsoleLogger, Logger, TensorBoardLogger, WandbLogger, flatten_metrics,
                                       log_dataset_summary, log_item_loss_histogram)

SUMMARY = {"items": 5, "updates": 20, "mean_loss": 0.75, "p50": 0.5, "p90": 1.6, "p99": 1.96, "nonfinite": 2,
           "worst": [("img/4.png", 2.0), ("img/2.png", 1.0)]}
ITEM_LOSSES = np.array([0.25, 0.5, 1.0, 0.0, 2.0])


def test_tensorboard_event_file_reads_back(tmp_path):
    ea_mod = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                 reason="the [tensorboard] extra is not installed: pip install caption_evaluator[tensorboard]")
    with TensorBoardLogger(tmp_path / "tb") as tb:
        for step in (1, 2, 3):
            tb.log_metrics({"loss": 1.0 / step, "stats": {"acc": step / 10, "skip": None}}, step=step, prefix="val")
        log_dataset_summary(tb, SUMMARY, step=3, dataset="train")
        log_item_loss_histogram(tb, {f"img/{i}.png": {"average_loss": v} for i, v in enumerate(ITEM_LOSSES)},
                                step=3, dataset="train")
        tb.log_histogram("with_nonfinite", [1.0, float("nan"), float("inf"), 3.0], step=4)
    acc = ea_mod.EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    assert [s for s, _ in scalars["val/loss"]] == [1, 2, 3]
    np.testing.assert_allclose([v for _, v in scalars["val/loss"]], [1.0, 0.5, 1 / 3], rtol=1e-6)
    np.testing.assert_allclose([v for _, v in scalars["val/stats/acc"]], [0.1, 0.2, 0.3], rtol=1e-6)
    assert "val/stats/skip" not in scalars
    for key in ("items", "updates", "mean_loss", "p50", "p90", "p99", "nonfinite"):
        assert scalars[f"items/train/{key}"] == [(3, pytest.approx(float(SUMMARY[key]), rel=1e-6))]
    assert scalars["items/train/worst_loss"] == [(3, 2.0)]
    assert "items/train/worst" not in scalars
    h = acc.Histograms("items/train/average_loss")[0]
    assert (h.step, h.histogram_value.num, h.histogram_value.min, h.histogram_value.max) == (3, 5, 0.0, 2.0)
    assert h.histogram_value.sum == pytest.approx(ITEM_LOSSES.sum())
    h = acc.Histograms("with_nonfinite")[0]
    assert (h.histogram_value.num, h.histogram_value.min, h.histogram_value.max) == (2, 1.0, 3.0)


def _wandb_records(path: Path):
    "Payloads of a `.wandb` file: a 7-byte file header, then LevelDB-log style 32 KiB blocks of chunks."
    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic) == (b":W&B", 0xBEE1), "not a W&B record file"
    block, pos, pending = 32768, 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little room for a chunk header: the rest of the block is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        chunk, pos = data[pos:pos + length], pos + length
        if kind == 1: yield chunk                    # FULL
        elif kind == 2: pending = chunk              # FIRST
        elif kind == 3: pending += chunk             # MIDDLE
        elif kind == 4: yield pending + chunk        # LAST
        else: pos += block - pos % block if pos % block else 0  # zero padding


def _wandb_parsed(path: Path) -> list:
    "wandb protobuf `Record`s of a `.wandb` file."
    from wandb.proto import wandb_internal_pb2 as pb
    out = []
    for payload in _wandb_records(path):
        rec = pb.Record()
        rec.ParseFromString(payload)
        out.append(rec)
    return out


def _wait_for_exit_record(path: Path, timeout: float = 60.0) -> list:
    "Records of `path` once its final `exit` record is there: `run.finish()` can return before wandb-core's writer is done."
    deadline = time.monotonic() + timeout
    while True:
        records = _wandb_parsed(path) if path.stat().st_size > 7 else []
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline: return records
        time.sleep(0.2)


def _wandb_history(records: list) -> list[dict]:
    "History rows of an offline run's records."
    rows = []
    for rec in records:
        if rec.WhichOneof("record_type") != "history": continue
        row = {}
        for item in rec.history.item:
            keys = list(item.nested_key) or [item.key]
            row["/".join(keys)] = json.loads(item.value_json)
        rows.append(row)
    return rows


def test_wandb_offline_run_files(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="the [wandb] extra is not installed: pip install caption_evaluator[wandb]")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    logger = WandbLogger(project="test_loggers", dir=tmp_path, mode="offline")
    assert isinstance(logger, Logger)
    logger.log_metrics({"loss": 0.5, "stats": {"acc": 0.25, "none": None}}, step=1, prefix="val")
    logger.log_metrics({"loss": 0.125}, step=2, prefix="val")
    log_dataset_summary(logger, SUMMARY, step=3, dataset="train")
    log_item_loss_histogram(logger, ITEM_LOSSES, step=3, dataset="train")
    run_dir = logger.run_dir
    logger.close()

    assert run_dir.is_dir() and run_dir.name.startswith("offline-run-")
    assert run_dir.parent == tmp_path / "wandb"
    files = list(run_dir.glob("*.wandb"))
    assert len(files) == 1
    records = _wait_for_exit_record(files[0])
    assert any(r.WhichOneof("record_type") == "exit" for r in records), f"{files[0]} never got its exit record"
    rows = _wandb_history(records)
    by_step = {}
    for row in rows: by_step.setdefault(row["_step"], {}).update(row)
    assert {1, 2, 3} <= set(by_step), f"history rows in {files[0]}: {rows}"
    assert by_step[1]["val/loss"] == 0.5 and by_step[1]["val/stats/acc"] == 0.25
    assert "val/stats/none" not in by_step[1]
    assert by_step[2]["val/loss"] == 0.125
    for key in ("items", "updates", "mean_loss", "p50", "p90", "p99", "nonfinite"):
        assert by_step[3][f"items/train/{key}"] == pytest.approx(SUMMARY[key])
    assert by_step[3]["items/train/worst_loss"] == 2.0
    hist = by_step[3]["items/train/average_loss/_type"], by_step[3]["items/train/average_loss/values"]
    assert hist[0] == "histogram" and sum(hist[1]) == len(ITEM_LOSSES)
    bins = by_step[3]["items/train/average_loss/bins"]
    assert bins[0] == pytest.approx(ITEM_LOSSES.min()) and bins[-1] == pytest.approx(ITEM_LOSSES.max())


def test_wandb_bad_mode_names_argument(tmp_path):
    pytest.importorskip("wandb", reason="the [wandb] extra is not installed: pip install caption_evaluator[wandb]")
    with pytest.raises(ValueError, match="mode"):
        WandbLogger(dir=tmp_path, mode="offlin")


def test_console_logger_file_and_protocol(tmp_path):
    buf, path = io.StringIO(), tmp_path / "log.txt"
    console = ConsoleLogger(stream=buf, path=path, digits=3)
    logged = log_dataset_summary([console], SUMMARY, step=9, dataset="val")
    console.close()
    line = buf.getvalue().strip()
    assert path.read_text().strip() == line
    assert line.startswith("[step 9] items/val/items=5  items/val/updates=20")
    assert logged["items/val/worst_loss"] == 2.0 and "items/val/mean_loss=0.75" in line
    assert flatten_metrics({"a": [1, 2], "b": {"c": "x", "d": 1}}) == {"b/d": 1.0}
    quiet = ConsoleLogger(path=tmp_path / "quiet.txt", echo=False)
    quiet.log_metrics({"x": 1.5}, step=2)
    quiet.close()
    assert (tmp_path / "quiet.txt").read_text() == "[step 2] x=1.5\n"
    with pytest.raises(ValueError, match="path"):
        ConsoleLogger(echo=False)


def test_missing_extras_say_how_to_install(tmp_path, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` raise ImportError
    with pytest.raises(ImportError, match=r"caption_evaluator\[wandb\]"):
        WandbLogger(dir=tmp_path)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match=r"caption_evaluator\[tensorboard\]"):
        TensorBoardLogger(tmp_path / "tb")
