"""accelerate with 2 CPU processes (gloo, spawned): `accelerator.register_for_checkpointing(tracker)` is the
whole integration. `save_state` / `load_state` bring every rank's items back (accelerate writes custom state
from rank 0 only, so the tracker's `state_dict` gathers all ranks), and the synced statistics after the
resume equal one process that saw every record."""
import json
import os

import pytest
import torch
import torch.multiprocessing as mp

accelerate = pytest.importorskip("accelerate")

from caption_evaluator.tracking.aggregator import StreamingAggregator
from caption_evaluator.tracking.tracker import ItemLossTracker
from helpers import free_port as _free_port


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


CONFIGS = {"sharded": {}, "split_batches": {"split_batches": True}, "dispatched": {"dispatch_batches": True}}
N_ITEMS, BATCH, EPOCHS = 23, 4, 2


def _even_worker(rank, port, root):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE="2")
    from accelerate import Accelerator, DataLoaderConfiguration
    from caption_evaluator.integrations.accelerate import record_accelerate_batch
    out = {}
    for name, kw in CONFIGS.items():
        acc = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(even_batches=True, **kw))
        loader = acc.prepare(torch.utils.data.DataLoader(torch.arange(N_ITEMS), batch_size=BATCH, shuffle=True,
                                                         generator=torch.Generator().manual_seed(0)))
        tracker, raw, kept = ItemLossTracker(os.path.join(root, name), "job"), 0, 0
        for epoch in range(EPOCHS):
            for step, batch in enumerate(loader):
                kept += record_accelerate_batch(tracker, acc, "train", batch, batch.double() / 10 + epoch, step=step)
                raw += len(batch)
        synced = tracker.aggregator.sync()
        totals = torch.tensor([raw, kept]); torch.distributed.all_reduce(totals)
        out[name] = {"stats": synced.item_stats("train"), "raw": totals[0].item(), "kept": totals[1].item()}
    if rank == 0:
        with open(os.path.join(root, "even.json"), "w") as f: json.dump(out, f)
    torch.distributed.destroy_process_group()


def test_even_batches_padding_is_not_counted(tmp_path):
    "2 processes, 23 items, batches of 4, shuffled: accelerate pads every epoch's last round; each item counts once per epoch."
    mp.spawn(_even_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    got = json.loads((tmp_path / "even.json").read_text())
    want = {str(i): i / 10 + (EPOCHS - 1) / 2 for i in range(N_ITEMS)}   # item i's loss is i/10 + epoch: its mean over the epochs, by hand
    for name in CONFIGS:
        run = got[name]
        assert run["raw"] > N_ITEMS * EPOCHS, f"{name}: accelerate did not pad, the test shows nothing"
        assert run["kept"] == N_ITEMS * EPOCHS, name
        assert run["stats"].keys() == want.keys(), name
        for k, mean in want.items():
            assert run["stats"][k]["count"] == EPOCHS, (name, k)
            assert run["stats"][k]["average_loss"] == pytest.approx(mean, rel=1e-12), (name, k)
