"""StreamingAggregator.sync across 2 gloo ranks on CPU equals one process over the whole stream.

Each rank sees its own items plus some shared ones (also at the same step on both ranks, with duplicates
inside batches and a few NaN/inf losses). Rank 0 writes the JSON snapshot of the synced aggregator; the test
compares it with the snapshot of a single process that saw both ranks' batches, rank 0's first at each step,
and both with statistics computed by plain Python/numpy from the raw batches.
"""
import math
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from caption_evaluator.tracking.aggregator import StreamingAggregator
from caption_evaluator.tracking.snapshots import load_item_stats
from helpers import free_port as _free_port

WORLD, STEPS, BATCH = 2, 12, 48
EXACT = ("count", "min_loss", "max_loss", "first_loss", "last_loss", "last_step", "nonfinite")
CLOSE = ("average_loss", "std_loss")


def _batches(rank: int, step: int):
    "Rank `rank`'s (keys, losses) at `step`: private items, shared items, duplicates, some NaN/inf."
    rng = np.random.default_rng(1000 * step + rank)
    own = [f"rank{rank}/img_{i:03d}.png" for i in rng.integers(0, 40, BATCH - 12)]
    shared = [f"shared/img_{i:02d}.png" for i in rng.integers(0, 10, 10)]
    keys = own + shared + own[:2]                       # duplicates inside the batch
    losses = rng.gamma(2.0, 0.5, len(keys)).astype(np.float32)
    losses[rng.random(len(keys)) < 0.03] = np.nan
    if step == 3: losses[0] = np.inf
    return keys, torch.from_numpy(losses)


def _feed(agg: StreamingAggregator, ranks, val: bool = True):
    for step in range(STEPS):
        for r in ranks:
            keys, losses = _batches(r, step)
            agg.update("train", keys, losses, step=step)
            if val and step % 4 == 0:    # a second dataset with integer items, only on some steps
                agg.update("val", [r * 100 + i for i in range(5)] + [0], torch.arange(6.0) + step, step=step)


def _worker(rank: int, port: int, out_dir: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        agg = StreamingAggregator(keep_window=True, flush_every=100)   # queue boundaries inside the stream
        _feed(agg, [rank])
        before = agg.state_dict()
        synced = agg.sync()
        # sync leaves the local aggregator untouched, so syncing again never double-counts
        after = agg.state_dict()
        for name in before["datasets"]:
            for f, t in before["datasets"][name]["state"].items():
                assert torch.equal(t.nan_to_num(-7.0), after["datasets"][name]["state"][f].nan_to_num(-7.0))
        again = agg.sync()
        if rank == 0:
            synced.save_json(out_dir, "ddp", STEPS)
            again.save_json(os.path.join(out_dir, "again"), "ddp", STEPS)
    finally:
        dist.destroy_process_group()


def _assert_same(doc, ref):
    assert doc["schema"] == ref["schema"] == "caption_evaluator/item_stats@2"
    assert sorted(doc["datasets"]) == sorted(ref["datasets"])
    for name, rd in ref["datasets"].items():
        for part in ("item_stats", "window"):
            got = doc["datasets"][name] if part == "item_stats" else doc["datasets"][name]["window"]
            want = rd if part == "item_stats" else rd["window"]
            gs, ws = got["item_stats"], want["item_stats"]
            assert sorted(gs) == sorted(ws), (name, part)
            for key, w in ws.items():
                g = gs[key]
                for f in EXACT: assert g[f] == w[f], (name, key, f, g[f], w[f])
                for f in CLOSE:
                    if w[f] is None: assert g[f] is None
                    else: assert math.isclose(g[f], w[f], rel_tol=1e-12, abs_tol=1e-12), (name, key, f)
            s, r = got["summary"], want["summary"]
            for f in ("items", "updates", "batches", "nonfinite"): assert s[f] == r[f], (name, f)
            for f in ("mean_loss", "mean_item_loss", "p50", "p90", "p99"):
                assert math.isclose(s[f], r[f], rel_tol=1e-12), (name, f)
            assert [k for k, _ in s["worst"]] == [k for k, _ in r["worst"]]


def _brute_force_train() -> dict:
    "Per-key statistics of both ranks' train batches, by plain Python/numpy on the raw losses (no aggregator)."
    vals, nonfinite = {}, {}
    for step in range(STEPS):
        for r in range(WORLD):
            keys, losses = _batches(r, step)
            for k, v in zip(keys, losses.double().tolist()):
                nonfinite[k] = nonfinite.get(k, 0) + (not math.isfinite(v))
                vals.setdefault(k, [])
                if math.isfinite(v): vals[k].append(v)
    return {k: (len(v), nonfinite[k], np.mean(v) if v else None, np.std(v) if v else None, min(v, default=None),
                max(v, default=None)) for k, v in vals.items()}


def _assert_brute_force(doc):
    stats, want = doc["datasets"]["train"]["item_stats"], _brute_force_train()
    assert sorted(stats) == sorted(want)
    for k, (n, nf, mean, std, lo, hi) in want.items():
        s = stats[k]
        assert (s["count"], s["nonfinite"], s["min_loss"], s["max_loss"]) == (n, nf, lo, hi), k
        if mean is None: assert s["average_loss"] is None and s["std_loss"] is None, k
        else:
            assert math.isclose(s["average_loss"], mean, rel_tol=1e-12), k
            assert math.isclose(s["std_loss"], std, rel_tol=1e-9, abs_tol=1e-12), k


def test_sync_matches_single_process(tmp_path):
    ref_agg = StreamingAggregator(keep_window=True)
    _feed(ref_agg, range(WORLD))
    ref = load_item_stats(ref_agg.save_json(tmp_path / "single", "ddp", STEPS))
    assert ref["datasets"]["train"]["summary"]["nonfinite"] > 0          # the stream does exercise NaN/inf
    assert any(k.startswith("shared/") for k in ref["datasets"]["train"]["item_stats"])

    out = tmp_path / "ddp"
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    _assert_brute_force(ref)                                             # the reference is right by definition
    _assert_same(load_item_stats(out / f"ddp_{STEPS:09d}.json"), ref)
    _assert_brute_force(load_item_stats(out / f"ddp_{STEPS:09d}.json"))
    _assert_same(load_item_stats(out / "again" / f"ddp_{STEPS:09d}.json"), ref)


def test_sync_needs_init():
    with pytest.raises(RuntimeError, match="init_process_group"):
        StreamingAggregator().sync()
