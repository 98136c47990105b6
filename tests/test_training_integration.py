"""Integration: a simulated ai-toolkit-style training run writes one item-stats JSON per save step.

The trainer below follows the documented recipe (per-sample losses before the final mean, `save()`
writes `{job.name}_{step:09d}.json` into `save_root`). Every expected value is recomputed in plain
Python from the raw tensors, independently of `compute_per_example_loss` and `StreamingAggregator`.
"""
import json
import math
import random
from types import SimpleNamespace

import pytest
import torch

from caption_evaluator.tracking.snapshots import load_item_stats
from caption_evaluator.tracking.losses import compute_per_example_loss
from caption_evaluator.tracking.tracker import ItemLossTracker
from helpers import free_port as _free_port

N_ITEMS, MICRO_BATCH, ACCUM, STEPS, SAVE_EVERY = 10, 4, 3, 12, 4
PATHS = [f"dataset/img_{i:03d}.png" for i in range(N_ITEMS)]


class MiniTrainer:
    "The shape of an ai-toolkit SDTrainer: `calculate_loss` and `save` around a denoiser."

    def __init__(self, save_root, job_name, seed=0, keep_window=False, flush_every=1):
        torch.manual_seed(seed)
        self.job = SimpleNamespace(name=job_name)
        self.save_root = save_root
        self.step_num = 0
        self.model = torch.nn.Conv2d(2, 2, 3, padding=1)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.05)
        from caption_evaluator.tracking.aggregator import StreamingAggregator
        self.item_tracker = ItemLossTracker(save_root, job_name, aggregator=StreamingAggregator(keep_window=keep_window),
                                            flush_every=flush_every)
        self.recorded = []  # (step, path, loss recomputed in plain Python)

    def calculate_loss(self, noise_pred, noise, mask, weights, batch_paths):
        per_sample = compute_per_example_loss(noise_pred, noise, "mse", mask=mask, weights=weights)
        self.item_tracker.record("train", batch_paths, per_sample, self.step_num)
        self.recorded += [(self.step_num, p, plain_masked_mse(noise_pred[b], noise[b], mask[b], float(weights[b])))
                          for b, p in enumerate(batch_paths)]
        return per_sample.mean()

    def save(self):
        self.save_root.mkdir(parents=True, exist_ok=True)
        torch.save({"model": self.model.state_dict(), "item_tracker": self.item_tracker.state_dict()},
                   self.save_root / f"{self.job.name}_{self.step_num:09d}.pt")
        return self.item_tracker.on_save(self.step_num)

    def train(self, batches, until):
        "Run optimiser steps up to `until` over pre-drawn micro-batches (ACCUM per step)."
        while self.step_num < until:
            self.step_num += 1
            for x, noise, mask, w, paths in batches[self.step_num - 1]:
                loss = self.calculate_loss(self.model(x + noise), noise, mask, w, paths)
                (loss / ACCUM).backward()
            self.opt.step(); self.opt.zero_grad()
            if self.step_num % SAVE_EVERY == 0: self.save()


def plain_masked_mse(pred, target, mask, weight):
    "sum(w * m * (p - t)^2) / sum(m) over one sample, with a [1, H, W] mask repeated over channels."
    p, t, m = pred.tolist(), target.tolist(), mask.tolist()
    num = den = 0.0
    for c in range(len(p)):
        for i in range(len(p[c])):
            for j in range(len(p[c][i])):
                keep = float(m[0][i][j])
                num += weight * keep * (p[c][i][j] - t[c][i][j]) ** 2
                den += keep
    return num / den


def draw_batches(seed=1):
    "STEPS x ACCUM micro-batches; items repeat across batches and sometimes inside one batch."
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    out = []
    for _ in range(STEPS):
        step = []
        for _ in range(ACCUM):
            idx = [rng.randrange(N_ITEMS) for _ in range(MICRO_BATCH)]
            x = torch.randn(MICRO_BATCH, 2, 5, 5, generator=g)
            noise = torch.randn(MICRO_BATCH, 2, 5, 5, generator=g)
            mask = (torch.rand(MICRO_BATCH, 1, 5, 5, generator=g) > 0.3).float()
            mask[:, :, 0, 0] = 1.0  # never empty
            w = torch.rand(MICRO_BATCH, generator=g) + 0.5
            step.append((x, noise, mask, w, [PATHS[i] for i in idx]))
        out.append(step)
    return out


def expected_stats(recorded, upto):
    "Per-path count/average/min/max/last_step over records with step <= upto, in plain Python."
    acc = {}
    for step, path, loss in recorded:
        if step > upto: continue
        acc.setdefault(path, []).append((step, loss))
    return {p: {"count": len(v), "average_loss": math.fsum(l for _, l in v) / len(v), "min_loss": min(l for _, l in v),
                "max_loss": max(l for _, l in v), "last_step": v[-1][0], "last_loss": v[-1][1]} for p, v in acc.items()}


def check_snapshot(doc, expect, job, step, exact_last_step=True):
    assert doc["schema"] == "caption_evaluator/item_stats@2" and doc["job"] == job and doc["step"] == step
    stats = doc["datasets"]["train"]["item_stats"]
    assert set(stats) == set(expect)
    for path, e in expect.items():
        s = stats[path]
        assert s["count"] == e["count"], path
        if exact_last_step: assert s["last_step"] == e["last_step"], path
        else: assert e["last_step"] <= s["last_step"] <= step, path
        for f in ("average_loss", "min_loss", "max_loss", "last_loss"):
            assert s[f] == pytest.approx(e[f], rel=1e-5, abs=1e-6), (path, f)


@pytest.mark.parametrize("flush_every", [1, 5])
def test_training_run_writes_one_snapshot_per_save(tmp_path, flush_every):
    batches = draw_batches()
    trainer = MiniTrainer(tmp_path, "my_lora", flush_every=flush_every)
    trainer.train(batches, until=STEPS)

    save_steps = list(range(SAVE_EVERY, STEPS + 1, SAVE_EVERY))
    names = [f"my_lora_{s:09d}.json" for s in save_steps]
    assert sorted(p.name for p in tmp_path.glob("*.json")) == names
    assert [p.name for p in trainer.item_tracker.saved] == names
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left behind

    # items appear in several micro-batches, across accumulation and save steps
    counts = expected_stats(trainer.recorded, STEPS)
    assert max(e["count"] for e in counts.values()) > ACCUM
    for step, name in zip(save_steps, names):
        with open(tmp_path / name) as f: doc = json.load(f)
        check_snapshot(doc, expected_stats(trainer.recorded, step), "my_lora", step, exact_last_step=flush_every == 1)
        assert doc["datasets"]["train"]["summary"]["updates"] == sum(1 for s, _, _ in trainer.recorded if s <= step)


def test_duplicate_items_inside_a_micro_batch(tmp_path):
    trainer = MiniTrainer(tmp_path, "dup")
    g = torch.Generator().manual_seed(3)
    x, noise = torch.randn(4, 2, 5, 5, generator=g), torch.randn(4, 2, 5, 5, generator=g)
    mask, w = torch.ones(4, 1, 5, 5), torch.ones(4)
    trainer.step_num = 1
    trainer.calculate_loss(x, noise, mask, w, [PATHS[0], PATHS[1], PATHS[0], PATHS[0]])
    check_snapshot(load_item_stats(trainer.save()), expected_stats(trainer.recorded, 1), "dup", 1)


def test_resume_from_checkpoint_gives_identical_snapshots(tmp_path):
    batches = draw_batches()
    straight = MiniTrainer(tmp_path / "straight", "job")
    straight.train(batches, until=STEPS)

    first = MiniTrainer(tmp_path / "resumed", "job")
    first.train(batches, until=2 * SAVE_EVERY)
    ckpt = torch.load(tmp_path / "resumed" / f"job_{2 * SAVE_EVERY:09d}.pt", weights_only=True)
    second = MiniTrainer(tmp_path / "resumed", "job")
    second.model.load_state_dict(ckpt["model"])
    second.item_tracker.load_state_dict(ckpt["item_tracker"])
    second.step_num = 2 * SAVE_EVERY
    second.recorded = list(first.recorded)
    second.train(batches, until=STEPS)

    a = load_item_stats(tmp_path / "straight" / f"job_{STEPS:09d}.json")["datasets"]["train"]["item_stats"]
    b = load_item_stats(tmp_path / "resumed" / f"job_{STEPS:09d}.json")["datasets"]["train"]["item_stats"]
    assert set(a) == set(b)
    for k in a:
        for f in ("count", "average_loss", "min_loss", "max_loss", "last_step"):
            assert a[k][f] == pytest.approx(b[k][f], rel=1e-6), (k, f)
    check_snapshot(load_item_stats(tmp_path / "resumed" / f"job_{STEPS:09d}.json"),
                   expected_stats(second.recorded, STEPS), "job", STEPS)


def test_window_since_last_save(tmp_path):
    batches = draw_batches()
    trainer = MiniTrainer(tmp_path, "win", keep_window=True)
    trainer.train(batches, until=2 * SAVE_EVERY)
    doc = load_item_stats(tmp_path / f"win_{2 * SAVE_EVERY:09d}.json")
    window = doc["datasets"]["train"]["window"]["item_stats"]
    since = [r for r in trainer.recorded if r[0] > SAVE_EVERY]
    expect = expected_stats(since, 2 * SAVE_EVERY)
    assert set(window) == set(expect)
    for k, e in expect.items():
        assert window[k]["count"] == e["count"]
        assert window[k]["average_loss"] == pytest.approx(e["average_loss"], rel=1e-5)


# --- torch.distributed: every rank calls on_save, rank 0 writes the merged statistics -------------------

WORLD = 2


def _rank_records(rank, step):
    "(paths, losses) of `rank` at `step`: private items plus items shared by both ranks."
    rng = random.Random(100 * step + rank)
    paths = [f"rank{rank}/{rng.randrange(6)}.png" for _ in range(5)] + [f"shared/{rng.randrange(3)}.png" for _ in range(3)]
    return paths, [rng.uniform(0.1, 3.0) for _ in paths]


def _ddp_worker(rank, port, out_dir):
    import os
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        tracker = ItemLossTracker(out_dir, "ddp", save_every=4)
        written = []
        for step in range(1, 9):
            paths, losses = _rank_records(rank, step)
            tracker.record("train", paths, torch.tensor(losses, dtype=torch.float64), step)
            written.append(tracker.maybe_save(step))
        saved = [str(p) for p in written if p is not None]
        with open(f"{out_dir}/rank{rank}.json", "w") as f: json.dump(saved, f)
    finally:
        dist.destroy_process_group()


def test_distributed_on_save_writes_merged_snapshot_on_rank0(tmp_path):
    import torch.multiprocessing as mp
    mp.spawn(_ddp_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    with open(tmp_path / "rank0.json") as f: saved0 = json.load(f)
    with open(tmp_path / "rank1.json") as f: saved1 = json.load(f)
    assert [p.rsplit("/", 1)[-1] for p in saved0] == ["ddp_000000004.json", "ddp_000000008.json"]
    assert saved1 == []  # only rank 0 writes
    recorded = [(step, p, l) for step in range(1, 9) for r in range(WORLD) for p, l in zip(*_rank_records(r, step))]
    for step in (4, 8):  # the second save does not double-count what the first one merged
        doc = load_item_stats(tmp_path / f"ddp_{step:09d}.json")
        stats = doc["datasets"]["train"]["item_stats"]
        expect = expected_stats(recorded, step)
        assert set(stats) == set(expect)
        for k, e in expect.items():
            assert stats[k]["count"] == e["count"], k
            for f in ("average_loss", "min_loss", "max_loss"): assert stats[k][f] == pytest.approx(e[f], rel=1e-12), (k, f)
