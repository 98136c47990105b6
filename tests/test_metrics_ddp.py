"""Two gloo ranks, each evaluating half of the data, must reach exactly the single-process metrics after `sync()`."""
import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from caption_evaluator.evaluation.metrics import ClassificationMetric, PairMetric, PositionLossMetric, TokenLMMetric
from helpers import free_port as _free_port

WORLD = 2


def _data():
    "Deterministic data: classification (uneven split, NaN rows, an absent class), LM, pairs with renditions, positions."
    g = torch.Generator().manual_seed(0)
    cls_logits = torch.randn(203, 7, generator=g)
    cls_labels = torch.randint(0, 6, (203,), generator=g)  # class 6 never occurs
    cls_logits[[5, 150]] = float("nan")
    lm_logits = torch.randn(6, 9, 11, generator=g)
    lm_labels = torch.randint(0, 11, (6, 9), generator=g)
    lm_labels[:, -3:][torch.rand(6, 3, generator=g) < 0.5] = -100
    pair_ids = [f"p{i % 13}" for i in range(60)]  # 13 pair ids, 4-5 renditions each, split across ranks
    good = torch.randint(0, 4, (60,), generator=g).float()  # small integers: many ties
    bad = torch.randint(0, 4, (60,), generator=g).float()
    pos_losses = torch.rand(4, 300, generator=g)
    pos_mask = torch.ones(4, 300, dtype=torch.bool)
    pos_mask[2:, 130:] = False  # the second rank only sees short sequences
    return cls_logits, cls_labels, lm_logits, lm_labels, pair_ids, good, bad, pos_losses, pos_mask


def _metrics():
    return (ClassificationMetric(num_classes=7, topk=(1, 3, 5), calibration_bins=10), TokenLMMetric(), PairMetric(),
            PositionLossMetric(bucket_size=32, positions=(64, 256)))


def _feed(ms, rank: int, world: int) -> None:
    cls_logits, cls_labels, lm_logits, lm_labels, pair_ids, good, bad, pos_losses, pos_mask = _data()
    cm, lm, pm, plm = ms
    sl = slice(0, 203) if world == 1 else (slice(0, 120) if rank == 0 else slice(120, 203))  # uneven halves
    for s in range(sl.start, sl.stop, 32):
        e = min(s + 32, sl.stop)
        cm.update(cls_logits[s:e], cls_labels[s:e])
    seqs = slice(0, 6) if world == 1 else (slice(0, 4) if rank == 0 else slice(4, 6))
    lm.update(lm_logits[seqs], lm_labels[seqs])
    idx = range(rank, 60, world)
    pm.update([pair_ids[i] for i in idx], good[list(idx)], bad[list(idx)])
    rows = slice(0, 4) if world == 1 else (slice(0, 2) if rank == 0 else slice(2, 4))
    plm.update(pos_losses[rows], pos_mask[rows])


def _results(ms) -> dict:
    return {type(m).__name__: m.compute() for m in ms}


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        ms = _metrics()
        _feed(ms, rank, WORLD)
        local = _results(ms)
        for m in ms: m.sync()
        synced = _results(ms)
        for m in ms: m.sync()  # a second sync must not double count
        twice = _results(ms)
        # an update after sync goes back to the local state; syncing again stays exact
        ms[0].update(torch.eye(7)[:2] * 5, torch.tensor([0, 1]))
        ms[0].sync()
        after_update = ms[0].compute()
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"local": local, "synced": synced, "twice": twice, "after_update": after_update}, f)
    finally:
        dist.destroy_process_group()


def _single() -> dict:
    ms = _metrics()
    _feed(ms, 0, 1)
    whole = _results(ms)
    ms[0].update(torch.eye(7)[:2] * 5, torch.tensor([0, 1]))
    ms[0].update(torch.eye(7)[:2] * 5, torch.tensor([0, 1]))  # both ranks added this batch once
    return whole, ms[0].compute()


def _roundtrip(x):
    "What json does to the single-process results (int keys become str), so both sides compare alike."
    return json.loads(json.dumps(x))


def _close(a, b, path=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a: _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)): _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-12, abs=1e-12), path
    else:
        assert a == b, path


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]


def test_sync_matches_single_process(ranks):
    whole, _ = _single()
    whole = _roundtrip(whole)
    for r in ranks:
        _close(whole, r["synced"])


def test_ranks_saw_different_halves(ranks):
    "Guard against a vacuous test: the local results differ from each other and from the whole."
    a, b = ranks[0]["local"], ranks[1]["local"]
    assert a["ClassificationMetric"]["samples"] != b["ClassificationMetric"]["samples"]
    assert a["ClassificationMetric"]["samples"] + b["ClassificationMetric"]["samples"] == 201  # 2 NaN rows excluded
    assert a["ClassificationMetric"]["nan_logits"] + b["ClassificationMetric"]["nan_logits"] == 2
    assert a["PositionLossMetric"]["positions"] != b["PositionLossMetric"]["positions"]


def test_second_sync_does_not_double_count(ranks):
    for r in ranks:
        _close(r["synced"], r["twice"])


def test_update_after_sync_then_sync_again(ranks):
    _, after = _single()
    for r in ranks:
        _close(_roundtrip(after), r["after_update"])


def test_sync_is_noop_without_distributed():
    ms = _metrics()
    _feed(ms, 0, 1)
    before = _results(ms)
    for m in ms: m.sync()
    _close(_roundtrip(before), _roundtrip(_results(ms)))
