"""`ItemLossTrainerMixin` in a real transformers `Trainer` on a tiny GPT-2 built from a config, with gradient
accumulation, padding and checkpoint rotation: the recorded per-sequence losses are the Trainer's own loss
(their token sums over `num_items_in_batch` equal it), each item's statistics equal a brute-force per-token
recomputation from the same logits, snapshots survive `save_total_limit`, and a resumed run ends with the
statistics of an uninterrupted one."""
import json
import os

import pytest
import torch
import torch.multiprocessing as mp

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

from caption_evaluator.integrations.hf import ItemLossTrainerMixin
from caption_evaluator.tracking.snapshots import load_item_stats
from helpers import free_port as _free_port


def rows(n=10):
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(0, 40, (int(k),), generator=g).tolist(), "item_key": i}
            for i, k in enumerate(torch.randint(4, 12, (n,), generator=g))]


def collate(batch):
    T = max(len(b["input_ids"]) for b in batch)
    ids = torch.tensor([b["input_ids"] + [0] * (T - len(b["input_ids"])) for b in batch])
    mask = torch.tensor([[1] * len(b["input_ids"]) + [0] * (T - len(b["input_ids"])) for b in batch])
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100), "item_key": torch.tensor([b["item_key"] for b in batch])}


class Checked(ItemLossTrainerMixin, Trainer):
    "Also recomputes every sequence's loss token by token and checks the Trainer's own loss."
    brute, by_step = None, None
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None, **kw):
        keys, labels = inputs["item_key"].tolist(), inputs["labels"]
        loss, out = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch, **kw)
        if model.training:
            logp = torch.log_softmax(out.logits.detach().double(), -1)
            total = 0.0
            for b, key in enumerate(keys):
                nll = [-float(logp[b, t - 1, labels[b, t]]) for t in range(1, labels.shape[1]) if labels[b, t] != -100]
                total += sum(nll)
                self.brute.setdefault(str(key), []).append(sum(nll) / len(nll))
                self.by_step.setdefault(str(key), []).append((self.state.global_step, sum(nll) / len(nll)))
            world = self.accelerator.num_processes                   # under DDP the Trainer scales by the process count
            assert total * world / float(num_items_in_batch) == pytest.approx(float(loss.detach()), rel=1e-5)   # the Trainer's own loss
        return (loss, out) if return_outputs else loss


class StopAt(TrainerCallback):
    "Stop after `step` optimiser steps (the learning-rate schedule still planned for all of them): a killed job."
    def __init__(self, step): self.step = step
    def on_step_end(self, args, state, control, **kw):
        if state.global_step >= self.step: control.should_training_stop = True


def run(out, max_steps, resume=None, brute=None, stop_at=None, epochs=None, world=1):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                                                resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))   # no dropout: a resumed run trains identically
    args = TrainingArguments(str(out), per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=max_steps,
                             num_train_epochs=epochs or 1, save_steps=2 if world == 1 else 1, save_total_limit=1 if world == 1 else 2,
                             report_to=[], use_cpu=True, disable_tqdm=True, seed=0, data_seed=0, ddp_backend="gloo" if world > 1 else None)
    data = rows() if world == 1 else rows(11)
    trainer = Checked(model=model, args=args, train_dataset=data, data_collator=collate, callbacks=[StopAt(stop_at)] if stop_at else None)
    trainer.brute, trainer.by_step = ({} if brute is None else brute), {}
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def last_stats(out):
    snaps = sorted((out / "item_stats").glob("items_*.json"))
    return load_item_stats(snaps[-1])["datasets"]["train"]["item_stats"], snaps


def test_tracked_losses_are_the_trainers(tmp_path):
    trainer = run(tmp_path, 6)
    stats, snaps = last_stats(tmp_path)
    assert [p.name for p in snaps] == ["items_000000002.json", "items_000000004.json", "items_000000006.json"]
    assert len(list(tmp_path.glob("checkpoint-*"))) == 1                    # rotated; the snapshots stay
    assert stats.keys() == trainer.brute.keys()
    for k, v in trainer.brute.items():
        assert stats[k]["count"] == len(v)
        assert stats[k]["average_loss"] == pytest.approx(sum(v) / len(v), rel=1e-5)


def test_resume_equals_uninterrupted(tmp_path):
    run(tmp_path / "whole", 6)
    whole, _ = last_stats(tmp_path / "whole")
    run(tmp_path / "part", 6, stop_at=4)
    run(tmp_path / "part", 6, resume=str(tmp_path / "part" / "checkpoint-4"))
    resumed, _ = last_stats(tmp_path / "part")
    assert resumed.keys() == whole.keys()
    for k in whole:
        assert resumed[k]["count"] == whole[k]["count"], k
        assert resumed[k]["average_loss"] == pytest.approx(whole[k]["average_loss"], rel=1e-5), k


def _ddp_worker(rank, port, out, stop_at, resume):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE="2")
    trainer = run(out, -1, resume=resume, stop_at=stop_at, epochs=2, world=2)
    with open(os.path.join(out, f"by_step_rank{rank}.json"), "w") as f: json.dump(trainer.by_step, f)


def _ddp(out, stop_at=None, resume=None):
    mp.spawn(_ddp_worker, args=(_free_port(), str(out), stop_at, resume), nprocs=2, join=True)


def test_two_processes_count_each_item_once_and_resume_exactly(tmp_path):
    """2 gloo processes, 11 sequences in batches of 2 with gradient accumulation 2: accelerate's `even_batches`
    repeats a sequence in each epoch's last round, and the Trainer fetches each accumulation window ahead. Each
    sequence counts once per epoch, with the loss the Trainer computed; a run stopped mid-epoch 2 and resumed
    on 2 processes ends with the same statistics."""
    _ddp(tmp_path / "whole")
    whole, _ = last_stats(tmp_path / "whole")
    steps_per_epoch = 2                                          # 3 batches per process, accumulated in windows of 2
    records = {}
    for rank in (0, 1):
        for k, recs in json.loads((tmp_path / "whole" / f"by_step_rank{rank}.json").read_text()).items():
            records.setdefault(k, []).extend(recs)
    assert sum(map(len, records.values())) == 2 * 12               # 12 records per epoch for 11 sequences: one repeat
    assert whole.keys() == records.keys() == {str(i) for i in range(11)}
    for k, recs in records.items():
        first = {}                                               # the repeat comes from the epoch's first batches: keep the earlier record
        for step, loss in sorted(recs): first.setdefault(step // steps_per_epoch, loss)
        assert whole[k]["count"] == 2 == len(first), k
        assert whole[k]["average_loss"] == pytest.approx(sum(first.values()) / 2, rel=1e-5), k
    _ddp(tmp_path / "part", stop_at=3)
    _ddp(tmp_path / "part", resume=str(tmp_path / "part" / "checkpoint-3"))
    resumed, _ = last_stats(tmp_path / "part")
    assert resumed.keys() == whole.keys()
    for k in whole:
        assert resumed[k]["count"] == whole[k]["count"], k
        assert resumed[k]["average_loss"] == pytest.approx(whole[k]["average_loss"], rel=1e-5), k
