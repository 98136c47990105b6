"""CSV exports for spreadsheet users: formula-like text is guarded, keys that are not UTF-8 are refused by
name with nothing written, and the JSON snapshot keeps every key exactly. Keys are drawn by hypothesis,
surrogate escapes (undecodable file names) included."""
import csv

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from caption_evaluator.tracking.aggregator import StreamingAggregator
from caption_evaluator.tracking.evaluate import write_item_stats_csv
from caption_evaluator.tracking.snapshots import load_item_stats
from caption_evaluator.views.widgets import write_rows_csv

keys = st.lists(st.text(st.characters(codec=None, exclude_categories=("Cs",)) | st.sampled_from(["=", "+", "-", "@", "\udcff", "\t"]),
                        min_size=1, max_size=8), min_size=1, max_size=6, unique=True)


def utf8(s):
    try: s.encode("utf-8"); return True
    except UnicodeEncodeError: return False


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keys)
def test_item_csv_is_exact_guarded_or_refused(tmp_path, ks):
    agg = StreamingAggregator()
    agg.update("train", ks, torch.arange(len(ks), dtype=torch.float32) - 1.5)
    path = tmp_path / "items.csv"
    path.unlink(missing_ok=True)
    if not all(utf8(k) for k in ks):
        bad = next(k for k in ks if not utf8(k))
        with pytest.raises(ValueError, match="not valid UTF-8") as e: write_item_stats_csv(agg.item_stats("train"), path)
        assert repr(bad) in str(e.value) and not path.exists()
        return
    write_item_stats_csv(agg.item_stats("train"), path)
    with open(path, encoding="utf-8", newline="") as f: rows = list(csv.reader(f))[1:]
    for k, row in zip(ks, rows):
        guarded = k.startswith(("=", "+", "-", "@", "\t", "\r"))
        assert row[0] == ("'" + k if guarded else k)
        assert float(row[1 + list(agg.item_stats("train")[k]).index("average_loss")]) == agg.item_stats("train")[k]["average_loss"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keys)
def test_json_snapshot_keeps_every_key(tmp_path, ks):
    agg = StreamingAggregator()
    agg.update("train", ks, torch.ones(len(ks)))
    doc = load_item_stats(agg.save_json(tmp_path, "keys", 1))
    assert list(doc["datasets"]["train"]["item_stats"]) == ks


def test_rows_csv_guards_text_cells(tmp_path):
    p = write_rows_csv(tmp_path / "rows.csv", [{"item": "=cmd()", "loss": -0.25, "note": "@me"}])
    assert p.read_text().splitlines()[1] == "'=cmd(),-0.25,'@me"
