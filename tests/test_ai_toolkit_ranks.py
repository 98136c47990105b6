"""The ai-toolkit trainer wrapper on 2 gloo ranks, called in the order ai-toolkit's `BaseSDTrainProcess.run` calls a
multi-process run: `calculate_loss` and `end_step_hook` on every rank, `save(step)` on every rank inside the loop
(ai-toolkit's own `save` returns at once on all but the main rank), and the final `save()` on the main rank alone.

The stand-in reduces like ai-toolkit (`.mean([1, 2, 3])`, then the final `.mean()`); the expected per-item losses are
computed by numpy from the same inputs. Without care the final save's cross-rank merge waits for a rank that never
comes; the test gives every rank a deadline and checks the merged snapshot and each rank's own resume state."""
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from caption_evaluator.integrations.ai_toolkit import trainer_class
from caption_evaluator.tracking.snapshots import load_item_stats
from helpers import free_port

WORLD, STEPS, SAVE_EVERY = 2, 4, 2


def _inputs(rank: int, step: int):
    "Rank `rank`'s batch at `step`: two image paths, prediction and target `[2, 1, 2, 2]`."
    g = np.random.default_rng(100 * step + rank)
    paths = [f"/data/r{rank}_img{(step + i) % 3}.png" for i in range(2)]
    return paths, g.normal(size=(2, 1, 2, 2)).astype(np.float32), g.normal(size=(2, 1, 2, 2)).astype(np.float32)


class _Item:
    def __init__(self, path): self.path, self.caption = path, "a caption"


class _StandIn:
    "ai-toolkit's protocol: the main rank alone writes weights; `train_config.steps`; per-sample reduction then `.mean()`."
    def __init__(self, root):
        self.save_root, self.step_num, self.job = root, 0, type("Job", (), {"name": "lora"})
        self.train_config = type("Train", (), {"steps": STEPS})
    def calculate_loss(self, noise_pred, noise, noisy_latents, timesteps, batch, **kwargs):
        return (noise_pred - noise).pow(2).mean([1, 2, 3]).mean()
    def end_step_hook(self): pass
    def save(self, step=None):
        if dist.get_rank() != 0: return
        (Path(self.save_root) / f"weights_{step}.txt").write_text("")


def _worker(rank: int, port: int, root: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        trainer = trainer_class(_StandIn)(Path(root))
        for step in range(STEPS):                                # BaseSDTrainProcess.run's loop, in its order
            paths, pred, target = _inputs(rank, step)
            batch = type("Batch", (), {"file_items": [_Item(p) for p in paths]})
            trainer.calculate_loss(torch.from_numpy(pred), torch.from_numpy(target), None, torch.tensor([10, 500]), batch)
            if step != 0 and step % SAVE_EVERY == 0: trainer.save(step)
            trainer.step_num = step + 1
            trainer.end_step_hook()
        if rank == 0: trainer.save()                             # the final save: the main rank only
    finally:
        dist.destroy_process_group()


def test_the_final_save_on_the_main_rank_alone_merges_every_ranks_items(tmp_path):
    ctx = mp.start_processes(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=False, start_method="spawn")
    for _ in range(120):                                        # 2 minutes: a rank waiting on a missing peer fails the test
        if ctx.join(timeout=1): break
    else:
        for p in ctx.processes: p.kill()
        raise AssertionError("a rank is still waiting: the final save waited for a collective the other rank never joins")
    folder = tmp_path / ".item_stats"
    assert sorted(p.name for p in folder.glob("*.pt")) == ["lora_tracker_rank0.pt", "lora_tracker_rank1.pt"]
    last = load_item_stats(folder / f"lora_{STEPS:09d}.json")["datasets"]["train"]["item_stats"]
    losses = {}
    for rank in range(WORLD):
        for step in range(STEPS):
            paths, pred, target = _inputs(rank, step)
            for path, value in zip(paths, ((pred - target) ** 2).mean(axis=(1, 2, 3))): losses.setdefault(path, []).append(float(value))
    assert sorted(last) == sorted(losses)
    for path, values in losses.items():
        assert last[path]["count"] == len(values)
        assert np.isclose(last[path]["average_loss"], np.mean(values), rtol=1e-6), path
    assert json.loads((folder / "lora.captions.json").read_text()).keys() == losses.keys()
