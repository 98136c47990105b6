"""`sync` of timestep tables and named values across 2 gloo ranks equals one process over the whole stream.

Each rank records its own items and some shared ones, with timesteps (some outside the range, some NaN) and
two named values (one missing from some batches). Rank 0 saves the synced snapshot; the test compares it with a
single process that saw both ranks' batches, rank 0's first at each step, and the
timestep-normalised means with the definition recomputed from the raw records.
"""
import math
import os

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from caption_evaluator.tracking.aggregator import StreamingAggregator
from caption_evaluator.tracking.snapshots import load_item_stats
from helpers import free_port as _free_port

WORLD, STEPS = 2, 6


def _batch(rank: int, step: int):
    rng = np.random.default_rng(100 * step + rank)
    keys = [f"r{rank}/{i}" for i in rng.integers(0, 12, 10)] + [f"shared/{i}" for i in rng.integers(0, 4, 4)]
    losses = rng.gamma(2.0, 0.5, len(keys))
    losses[rng.random(len(keys)) < 0.05] = np.nan
    t = rng.integers(-20, 1050, len(keys)).astype(float)
    t[rng.random(len(keys)) < 0.05] = np.nan
    values = {"margin": rng.normal(size=len(keys))}
    if step % 2: values["correct"] = (rng.random(len(keys)) < 0.5).astype(float)
    return keys, losses, t, values


def _feed(agg, ranks, mark=False):
    "Each step's batches of `ranks`, lower rank first (the order a step-ordered merge gives shared items); a history point every 2 steps."
    for step in range(STEPS):
        if mark and step and step % 2 == 0: agg.mark_history(step)
        for rank in ranks:
            keys, losses, t, values = _batch(rank, step)
            agg.update("train", keys, torch.tensor(losses), step=step, timesteps=torch.tensor(t),
                       values={n: torch.tensor(v) for n, v in values.items()})


def _worker(rank: int, port: int, out_dir: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        agg = StreamingAggregator(timestep_range=(0, 1000), keep_window=True, flush_every=9, history=True)
        _feed(agg, [rank], mark=True)
        synced = agg.sync()
        if rank == 0: synced.save_json(out_dir, "ddp", STEPS)
    finally:
        dist.destroy_process_group()


def _tnorm_reference():
    recs = []
    for rank in range(WORLD):
        for step in range(STEPS):
            keys, losses, t, _ = _batch(rank, step)
            recs += [(k, l, min(9, max(0, int(x // 100)))) for k, l, x in zip(keys, losses, t) if math.isfinite(l) and math.isfinite(x)]
    mu = {b: np.mean([l for _, l, c in recs if c == b]) for b in {c for *_, c in recs}}
    per = {}
    for k, l, b in recs: per.setdefault(k, []).append(l / mu[b])
    return {k: float(np.mean(v)) for k, v in per.items()}


def test_sync_of_scores_equals_one_process(tmp_path):
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True, start_method="spawn")
    got = load_item_stats(tmp_path / f"ddp_{STEPS:09d}.json")["datasets"]["train"]
    one = StreamingAggregator(timestep_range=(0, 1000), keep_window=True)
    _feed(one, range(WORLD))
    want = load_item_stats(one.save_json(tmp_path / "one", "one", STEPS))["datasets"]["train"]
    assert got["timesteps"]["count"] == want["timesteps"]["count"] and got["timesteps"]["unbucketed"] == want["timesteps"]["unbucketed"]
    assert np.allclose(np.array(got["timesteps"]["mean"], dtype=float), np.array(want["timesteps"]["mean"], dtype=float), rtol=1e-12)
    ref = _tnorm_reference()
    assert sorted(got["item_stats"]) == sorted(want["item_stats"])
    for key, w in want["item_stats"].items():
        g = got["item_stats"][key]
        assert math.isclose(g["tnorm_average_loss"], ref[key], rel_tol=1e-9)
        for name in ("margin", "correct"):
            gv, wv = g["values"][name], w["values"][name]
            for f in ("count", "min", "max", "first", "last"): assert gv[f] == wv[f], (key, name, f)
            for f in ("mean", "std"): assert (gv[f] is None and wv[f] is None) or math.isclose(gv[f], wv[f], rel_tol=1e-9, abs_tol=1e-12)
            if not key.startswith("shared/"): assert gv["decreases"] == wv["decreases"], (key, name)   # one rank's records: exact
    for key in ref: assert math.isclose(got["window"]["item_stats"][key]["tnorm_average_loss"], ref[key], rel_tol=1e-9)
    # history: points at steps 2, 4 and the save (6); each holds the mean of both ranks' records of its interval
    assert got["history_steps"] == [2, 4, STEPS]
    for key, g in got["item_stats"].items():
        for p, (lo, hi) in enumerate(((0, 2), (2, 4), (4, STEPS))):
            ls = [l for r in range(WORLD) for s in range(lo, hi) for k, l in zip(_batch(r, s)[0], _batch(r, s)[1]) if k == key and math.isfinite(l)]
            h = g["history"]["average_loss"][p]
            assert (h is None) if not ls else math.isclose(h, float(np.mean(ls)), rel_tol=2e-6), (key, p)
