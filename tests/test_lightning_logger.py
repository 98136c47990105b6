"""A real Lightning logger takes the tracker's summaries: `ItemLossTracker(loggers=CSVLogger(...))` writes the
summary scalars into Lightning's own metrics.csv, read back here."""
import csv

import pytest
import torch

lightning = pytest.importorskip("lightning")
from lightning.pytorch.loggers import CSVLogger

from caption_evaluator.tracking.tracker import ItemLossTracker


def test_csv_logger_receives_summaries(tmp_path):
    logger = CSVLogger(tmp_path / "logs", name="run")
    tracker = ItemLossTracker(tmp_path / "snaps", "job", loggers=logger)
    losses = {"a": [0.5, 1.5], "b": [2.0, 4.0]}
    for step in range(2): tracker.record("train", ["a", "b"], torch.tensor([losses["a"][step], losses["b"][step]]), step=step)
    tracker.on_save(2)
    logger.save()
    with open(logger.experiment.metrics_file_path) as f: rows = list(csv.DictReader(f))
    row = next(r for r in rows if r.get("items/train/mean_loss"))
    assert float(row["items/train/mean_loss"]) == pytest.approx((0.5 + 1.5 + 2.0 + 4.0) / 4)
    assert float(row["items/train/items"]) == 2 and int(row["step"]) == 2
