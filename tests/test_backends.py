"""Syncing across 2 CPU ranks whatever the process group's backend string says: 'gloo', 'cpu:gloo', and
'undefined' (`init_process_group()` without a backend). The aggregator's and a metric's synced results equal
one process that saw every rank's records."""
import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from caption_evaluator.tracking.aggregator import StreamingAggregator
from caption_evaluator.evaluation.metrics import ClassificationMetric
from helpers import free_port as _free_port


def _records(rank):
    g = torch.Generator().manual_seed(rank)
    return [f"k{i}" for i in torch.randint(0, 6, (8,), generator=g).tolist()], torch.rand(8, generator=g), torch.randn(8, 4, generator=g), torch.randint(0, 4, (8,), generator=g)


def _worker(rank, port, backend, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(**({} if backend is None else {"backend": backend}), rank=rank, world_size=2)
    try:
        keys, losses, logits, labels = _records(rank)
        agg = StreamingAggregator(); agg.update("train", keys, losses, step=rank)
        m = ClassificationMetric(4, topk=(1, 2)); m.update(logits, labels)
        stats, res = agg.sync().item_stats("train"), m.sync().compute()
        if rank == 0:
            with open(out, "w") as f: json.dump({"backend": str(dist.get_backend()), "stats": stats, "acc": res["accuracy"], "top2": res["top2_accuracy"]}, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("backend", ["gloo", "cpu:gloo", None])
def test_sync_on_any_cpu_backend(tmp_path, backend):
    out = tmp_path / "rank0.json"
    mp.spawn(_worker, args=(_free_port(), backend, str(out)), nprocs=2, join=True)
    got = json.loads(out.read_text())
    if backend is None: assert got["backend"] == "undefined"
    ref, m = StreamingAggregator(), ClassificationMetric(4, topk=(1, 2))
    for rank in (0, 1):
        keys, losses, logits, labels = _records(rank)
        ref.update("train", keys, losses, step=rank); m.update(logits, labels)
    for k, e in ref.item_stats("train").items():
        assert got["stats"][k]["count"] == e["count"]
        assert got["stats"][k]["average_loss"] == pytest.approx(e["average_loss"], rel=1e-6)
    r = m.compute()
    assert (got["acc"], got["top2"]) == (r["accuracy"], r["top2_accuracy"])


def _one_rank_worker(rank, port, out_dir, which):
    import time
    import caption_evaluator._dist as dist_plumbing
    from caption_evaluator.tracking.tracker import ItemLossTracker
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    dist_plumbing.SYNC_TIMEOUT_S = 2.0
    try:
        if rank == 1: time.sleep(6); return                     # only rank 0 calls: the mistake of `if is_main_process: tracker.on_save()`
        t0, msg = time.monotonic(), ""
        try:
            if which == "sync": StreamingAggregator().sync()
            elif which == "on_save":
                tr = ItemLossTracker(out_dir, "job"); tr.record("train", ["a"], torch.tensor([1.0])); tr.on_save(1)
            else: ClassificationMetric(3).sync()
        except RuntimeError as e: msg = str(e)
        with open(os.path.join(out_dir, "rank0.json"), "w") as f: json.dump({"seconds": time.monotonic() - t0, "error": msg}, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("which", ["sync", "on_save", "metric"])
def test_a_collective_on_one_rank_fails_fast(tmp_path, which):
    mp.spawn(_one_rank_worker, args=(_free_port(), str(tmp_path), which), nprocs=2, join=True)
    got = json.loads((tmp_path / "rank0.json").read_text())
    assert "call it on every rank" in got["error"] and got["seconds"] < 5, got
