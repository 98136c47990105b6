"""Item scores beyond the mean: timestep-normalised loss, named extra values and their decreases, ranking.

Every expected value is recomputed from the raw records by the definitions in the aggregator's docs (plain
Python and numpy), for streams that hypothesis draws: duplicates inside batches, NaN/inf losses, values and
timesteps, timesteps outside the declared range, batches that lack a value, queue boundaries anywhere, the
tracker's batching, checkpoint round trips and merges of consecutive parts.
"""
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from caption_evaluator.tracking.aggregator import StreamingAggregator
from caption_evaluator.tracking.snapshots import ITEM_SCHEMA, load_item_stats, rank_items, top_indices
from caption_evaluator.tracking.tracker import ItemLossTracker

EDGES = np.linspace(0.0, 1.0, 6)           # 5 buckets over sigma in [0, 1]
FIXTURE = Path(__file__).parent / "fixtures" / "item_stats_v1.json"
special = st.sampled_from([math.nan, math.inf, -math.inf])
number = st.floats(0.0, 10.0, allow_nan=False) | special
value = st.floats(-5.0, 5.0, allow_nan=False) | special


@st.composite
def streams(draw):
    "A list of batches (keys, losses, step, timesteps, values)."
    out = []
    for step in range(draw(st.integers(1, 8))):
        n = draw(st.integers(0, 12))
        keys = [f"k{draw(st.integers(0, 6))}" for _ in range(n)]
        losses = [draw(number) for _ in range(n)]
        ts = [draw(st.floats(-0.2, 1.2, allow_nan=False) | special) for _ in range(n)] if draw(st.integers(0, 4)) else None
        vals = {}
        if draw(st.booleans()): vals["margin"] = [draw(value) for _ in range(n)]
        if draw(st.booleans()): vals["correct"] = [float(draw(st.booleans())) for _ in range(n)]
        out.append((keys, losses, step, ts, vals))
    return out


def _bucket(t: float) -> int:
    return min(len(EDGES) - 2, max(0, int(np.searchsorted(EDGES, t, side="right")) - 1))


def reference(stream):
    "tnorm_average_loss and each value's statistics, by their definitions."
    recs = [(k, l, t) for ks, ls, _, ts, _ in stream if ts is not None for k, l, t in zip(ks, ls, ts) if math.isfinite(l) and math.isfinite(t)]
    sums, cnts = np.zeros(len(EDGES) - 1), np.zeros(len(EDGES) - 1)
    for _, l, t in recs: sums[_bucket(t)] += l; cnts[_bucket(t)] += 1
    mu = np.divide(sums, cnts, out=np.zeros_like(sums), where=cnts > 0)
    per = {}
    for k, l, t in recs:
        b = _bucket(t)
        per.setdefault(k, []).append(l / mu[b] if mu[b] != 0 else 0.0)
    seqs = {}
    for ks, _, _, _, vals in stream:
        for name, v in vals.items():
            for k, x in zip(ks, v):
                if math.isfinite(x): seqs.setdefault(name, {}).setdefault(k, []).append(x)
    return {k: float(np.mean(v)) for k, v in per.items()}, seqs


def feed(target, stream, tracker=False):
    for ks, ls, step, ts, vals in stream:
        args = dict(step=step, timesteps=None if ts is None else torch.tensor(ts, dtype=torch.float64),
                    values={n: torch.tensor(v, dtype=torch.float64) for n, v in vals.items()})
        if tracker: target.record("train", ks, torch.tensor(ls, dtype=torch.float64), **args)
        else: target.update("train", ks, torch.tensor(ls, dtype=torch.float64), **args)


def check(stats, stream, agg=None, tmp=None):
    tnorm, seqs = reference(stream)
    if agg is not None and agg._data["train"].edges is not None:     # the bucket table, read back from a snapshot
        table = load_item_stats(agg.save_json(tmp, "check", 1))["datasets"]["train"]["timesteps"]
        timed = [(l, t) for _, ls, _, ts, _ in stream if ts is not None for l, t in zip(ls, ts) if math.isfinite(l) and math.isfinite(t)]
        finite = sum(math.isfinite(l) for _, ls, *_ in stream for l in ls)
        assert table["count"] == [sum(_bucket(t) == b for _, t in timed) for b in range(len(EDGES) - 1)]
        assert table["unbucketed"] == finite - len(timed)
    for key, s in stats.items():
        if key in tnorm: assert math.isclose(s["tnorm_average_loss"], tnorm[key], rel_tol=1e-9, abs_tol=1e-12), key
        else: assert s.get("tnorm_average_loss") is None     # no bucketed record (or no timesteps at all: no field)
        for name, per in seqs.items():
            got, x = s["values"][name], per.get(key)
            if x is None:
                assert got["count"] == 0 and got["mean"] is None
                continue
            assert (got["count"], got["min"], got["max"], got["first"], got["last"]) == (len(x), min(x), max(x), x[0], x[-1])
            assert got["decreases"] == sum(b < a for a, b in zip(x, x[1:]))
            assert math.isclose(got["mean"], float(np.mean(x)), rel_tol=1e-9, abs_tol=1e-12)
            assert math.isclose(got["std"], float(np.std(x)), rel_tol=1e-7, abs_tol=1e-7)


SETTINGS = dict(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@settings(**SETTINGS)
@given(streams(), st.integers(1, 40))
def test_aggregator_matches_definitions(stream, flush_every):
    agg = StreamingAggregator(timestep_range=(0, 1), timestep_buckets=5, flush_every=flush_every)
    feed(agg, stream)
    if not agg.datasets: return
    stats = agg.item_stats("train")
    with tempfile.TemporaryDirectory() as tmp: check(stats, stream, agg, tmp)
    restored = StreamingAggregator().load_state_dict(agg.state_dict())
    assert json.dumps(restored.item_stats("train")) == json.dumps(stats)


@settings(**SETTINGS)
@given(streams(), st.integers(0, 8))
def test_merge_of_consecutive_parts(stream, cut):
    parts = [StreamingAggregator(timestep_range=(0, 1), timestep_buckets=5) for _ in range(2)]
    feed(parts[0], stream[:cut]); feed(parts[1], stream[cut:])
    merged = StreamingAggregator().merge(parts[0]).merge(parts[1])
    if not merged.datasets: return
    check(merged.item_stats("train"), stream)


@settings(**SETTINGS)
@given(streams(), st.integers(2, 9))
def test_tracker_batching_is_exact(stream, flush_every):
    batched = ItemLossTracker("unused", "b", flush_every=flush_every, timestep_range=(0, 1), timestep_buckets=5)
    exact = ItemLossTracker("unused", "e", flush_every=1, timestep_range=(0, 1), timestep_buckets=5)
    feed(batched, stream, tracker=True); feed(exact, stream, tracker=True)
    if not exact.aggregator.datasets: return
    assert json.dumps(batched.aggregator.item_stats("train")) == json.dumps(exact.aggregator.item_stats("train"))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(allow_nan=True) | st.integers(-3, 3).map(float), max_size=40), st.none() | st.integers(0, 45), st.booleans())
def test_top_indices_is_a_stable_sort(scores, k, ascending):
    keep = [i for i, s in enumerate(scores) if not math.isnan(s)]
    ref = sorted(keep, key=lambda i: scores[i] if ascending else -scores[i])
    assert top_indices(np.array(scores, dtype=np.float64), k, ascending).tolist() == (ref if k is None else ref[:k])


def test_v1_fixture_loads_and_ranks_as_written(tmp_path):
    raw = json.loads(FIXTURE.read_text())
    doc = load_item_stats(FIXTURE)
    assert doc["schema"] == ITEM_SCHEMA and raw["schema"].endswith("@1")
    for name, d in raw["datasets"].items():
        stats = doc["datasets"][name]["item_stats"]
        assert stats == d["item_stats"]
        k = len(d["summary"]["worst"])
        assert [list(w) for w in d["summary"]["worst"]] == [list(r) for r in rank_items(stats, k=k)]


def test_snapshot_default_score_follows_timesteps(tmp_path):
    agg = StreamingAggregator(timestep_range=(0, 1000))
    agg.update("diffusion", ["a", "b"], torch.tensor([1.0, 0.1]), step=0, timesteps=torch.tensor([0, 999]))
    agg.update("plain", ["a", "b"], torch.tensor([1.0, 0.1]), step=0)
    doc = load_item_stats(agg.save_json(tmp_path, "job", 1))
    assert doc["datasets"]["diffusion"]["summary"]["ranked_by"] == "tnorm_average_loss"
    assert doc["datasets"]["plain"]["summary"]["ranked_by"] == "average_loss"
    assert "timesteps" not in doc["datasets"]["plain"]


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 300), st.booleans())
def test_order_free_flush_equals_the_sorted_one(seed, n_items, new_items):
    "A big CPU flush of finite losses (recorded by order-free scatters) gives bit-for-bit the statistics of per-batch flushes."
    rng = np.random.default_rng(seed)
    batches = [(rng.integers(0, n_items, 64), rng.gamma(2.0, 0.5, 64), step) for step in range(80)]
    one_by_one = StreamingAggregator(flush_every=1, keep_window=True)
    bulk = StreamingAggregator(keep_window=True)           # one flush at the read: 5,120 losses over <= 300 items
    if not new_items:                                       # every item known before the bulk flush: the order-free path
        for agg in (one_by_one, bulk): agg.update("train", np.arange(n_items), torch.zeros(n_items, dtype=torch.float64), step=-1); agg.flush()
    for idx, ls, step in batches:
        for agg in (one_by_one, bulk): agg.update("train", idx, torch.tensor(ls), step=step)
    for window in (False, True):
        assert json.dumps(bulk.item_stats("train", window=window)) == json.dumps(one_by_one.item_stats("train", window=window))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 5))
def test_history_is_the_mean_of_each_interval_across_parts(seed, points):
    "Two parts of a stream (as two ranks), each marking the same points: merged, every point holds the interval's mean."
    rng = np.random.default_rng(seed)
    parts = [StreamingAggregator(history=True) for _ in range(2)]
    recs = []                                                  # (point, key, loss, margin)
    for p in range(points):
        for part in parts:
            n = int(rng.integers(0, 6))
            keys = [f"k{j}" for j in rng.integers(0, 5, n)]
            ls, ms = rng.gamma(2.0, 0.5, n), rng.normal(size=n)
            if n: part.update("train", keys, torch.tensor(ls), step=p, values={"margin": torch.tensor(ms)})
            recs += [(p, k, l, m) for k, l, m in zip(keys, ls, ms)]
        for part in parts: part.mark_history(p)
    merged = StreamingAggregator(history=True).merge(StreamingAggregator().load_state_dict(parts[0].state_dict())).merge(parts[1])
    if not merged.datasets: return
    stats = merged.item_stats("train")
    for key, s in stats.items():
        for p in range(points):
            mine = [(l, m) for q, k, l, m in recs if q == p and k == key]
            got = s["history"]["average_loss"][p]
            if not mine: assert got is None; continue
            assert math.isclose(got, float(np.mean([l for l, _ in mine])), rel_tol=2e-6, abs_tol=1e-6)
            if "values.margin" in s["history"]:
                assert math.isclose(s["history"]["values.margin"][p], float(np.mean([m for _, m in mine])), rel_tol=2e-6, abs_tol=1e-6)


def test_refused_merges_change_nothing(tmp_path):
    "Different history points or timestep buckets are refused, and the target keeps every statistic it had."
    a, b = StreamingAggregator(history=True), StreamingAggregator(history=True)
    for agg, step in ((a, 1), (b, 2)):
        agg.update("train", ["x"], torch.ones(1), step=step)
        agg.mark_history(step)
    before = json.dumps(a.state_dict()["datasets"]["train"]["state"]["count"].tolist()), a.item_stats("train")
    with pytest.raises(ValueError, match="history points differ"): a.merge(b)
    assert (json.dumps(a.state_dict()["datasets"]["train"]["state"]["count"].tolist()), a.item_stats("train")) == before
    c, d = StreamingAggregator(timestep_range=(0, 10)), StreamingAggregator(timestep_range=(0, 20))
    for name in ("x", "y"): c.update(name, ["k"], torch.ones(1), timesteps=torch.ones(1))
    d.update("x", ["k"], torch.ones(1))                     # no timesteps: "x" merges cleanly ...
    d.update("y", ["k"], torch.ones(1), timesteps=torch.ones(1))   # ... "y" disagrees: "x" must not be merged either
    with pytest.raises(ValueError, match="bucket timesteps differently"): c.merge(d)
    assert c.item_stats("x")["k"]["count"] == 1 and c.item_stats("y")["k"]["count"] == 1


def test_history_edge_cases(tmp_path):
    "A refused save adds no point; the flag and the edges survive a checkpoint; means beyond float32 are null, the file valid JSON."
    a = StreamingAggregator(history=True, timestep_range=(0, 1000))
    a.update("train", ["big", "ok"], torch.tensor([1e39, 1.0], dtype=torch.float64), step=0, timesteps=torch.tensor([1, 2]))
    with pytest.raises(ValueError): a.save_json(tmp_path, "a/b", 5)
    assert a._history_steps == []
    doc = json.loads(a.save_json(tmp_path, "ok", 5).read_text())          # plain json: no inf anywhere
    assert doc["datasets"]["train"]["item_stats"]["big"]["history"]["average_loss"] == [None]
    b = StreamingAggregator().load_state_dict(StreamingAggregator(history=True, timestep_range=(0, 1000)).state_dict())
    assert b.history and b.timestep_edges == a.timestep_edges


def test_masked_logits_give_a_finite_margin():
    from caption_evaluator.tracking.losses import classification_record
    rec = classification_record(torch.tensor([[2.0, -math.inf, -math.inf], [0.0, 1.0, 0.5]]), torch.tensor([0, 2]))
    assert torch.isfinite(rec.values["margin"]).all() and rec.values["margin"][0] > 1e30
    assert math.isclose(float(rec.values["margin"][1]), -0.5, rel_tol=1e-6)


def test_tracker_saves_per_epoch_history(tmp_path):
    "A tracker saving once per epoch writes each item's per-epoch mean loss and margin into one snapshot."
    tracker = ItemLossTracker(tmp_path, "hist", aggregator=StreamingAggregator(history=True))
    rng = np.random.default_rng(0)
    per_epoch = []
    for epoch in range(3):
        logits, labels = torch.tensor(rng.normal(size=(6, 3))), torch.tensor([0, 1, 2, 0, 1, 2])
        tracker.record_classification("train", [f"i{j}" for j in range(6)], logits, labels, step=epoch)
        per_epoch.append((torch.nn.functional.cross_entropy(logits, labels, reduction="none").numpy(), logits.numpy()))
        path = tracker.on_save(epoch)
    doc = load_item_stats(path)["datasets"]["train"]
    assert doc["history_steps"] == [0, 1, 2]
    for j in range(6):
        h = doc["item_stats"][f"i{j}"]["history"]
        assert np.allclose(h["average_loss"], [ce[j] for ce, _ in per_epoch], rtol=1e-6)
        gold = [lg[j, j % 3] - max(v for c, v in enumerate(lg[j]) if c != j % 3) for _, lg in per_epoch]
        assert np.allclose(h["values.margin"], gold, rtol=1e-6, atol=1e-6)


def test_snapshot_readers_never_import_torch(tmp_path):
    "The snapshot module, and `caption-eval items` on a real snapshot, run without loading torch."
    import subprocess, sys
    agg = StreamingAggregator()
    agg.update("train", ["a", "b"], torch.tensor([1.0, 2.0]), step=0, values={"margin": torch.tensor([0.5, -1.0])})
    path = agg.save_json(tmp_path, "job", 1)
    code = ("import sys, caption_evaluator.tracking.snapshots as s, caption_evaluator.cli as cli\n"
            f"doc = s.load_item_stats({str(path)!r}); s.rank_items(doc['datasets']['train']['item_stats'], by='aum')\n"
            f"assert cli.main(['items', {str(path)!r}, '--by', 'aum']) == 0\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False", out


def test_summary_of_huge_losses_is_valid_json(tmp_path):
    "Finite losses whose sum overflows give a None mean, not an unwritable inf; the items keep their exact values."
    agg = StreamingAggregator()
    agg.update("t", ["x", "y"], torch.tensor([1e308, 1e308], dtype=torch.float64))
    doc = json.loads(agg.save_json(tmp_path, "huge", 1).read_text())
    assert doc["datasets"]["t"]["summary"]["mean_loss"] is None
    assert doc["datasets"]["t"]["item_stats"]["x"]["average_loss"] == 1e308
