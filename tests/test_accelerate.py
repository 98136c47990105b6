"""accelerate with 2 CPU processes (gloo, spawned): `accelerator.register_for_checkpointing(tracker)` is the
whole integration. `save_state` / `load_state` bring every rank's items back (accelerate writes custom state
from rank 0 only, so the tracker's `state_dict` gathers all ranks), and the synced statistics after the
resume equal one process that saw every record."""
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

accelerate = pytest.importorskip("accelerate")

from caption_evaluator.aggregator import StreamingAggregator
from caption_evaluator.training import ItemLossTracker


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _records(rank):
    g = torch.Generator().manual_seed(10 + rank)
    return [[f"r{rank}/{i}" for i in torch.randint(0, 5, (4,), generator=g).tolist()] + ["shared"] for _ in range(3)], \
           [torch.rand(5, generator=g) for _ in range(3)]


def _worker(rank, port, root, phase):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE="2")
    from accelerate import Accelerator
    acc = Accelerator(cpu=True)
    tracker = ItemLossTracker(os.path.join(root, "snaps"), "job")
    acc.register_for_checkpointing(tracker)
    if phase == "train":
        keys, losses = _records(rank)
        for step, (k, l) in enumerate(zip(keys, losses)): tracker.record("train", k, l, step=step)
        acc.save_state(os.path.join(root, "ckpt"))
    else:
        acc.load_state(os.path.join(root, "ckpt"))
        synced = tracker.aggregator.sync()
        if rank == 0:
            with open(os.path.join(root, "synced.json"), "w") as f: json.dump(synced.item_stats("train"), f)
    acc.wait_for_everyone()
    torch.distributed.destroy_process_group()


def test_save_and_load_state_keep_every_rank(tmp_path):
    for phase in ("train", "resume"):
        mp.spawn(_worker, args=(_free_port(), str(tmp_path), phase), nprocs=2, join=True)
    got = json.loads((tmp_path / "synced.json").read_text())
    ref = StreamingAggregator()
    for step in range(3):
        for rank in (0, 1):
            keys, losses = _records(rank)
            ref.update("train", keys[step], losses[step], step=step)
    want = ref.item_stats("train")
    assert got.keys() == want.keys()
    for k in want:
        assert got[k]["count"] == want[k]["count"], k
        assert got[k]["average_loss"] == pytest.approx(want[k]["average_loss"], rel=1e-6), k
