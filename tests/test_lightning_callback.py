"""`ItemLossCallback` in a real Lightning `Trainer`: statistics equal the losses the module computed; a run
stopped after one epoch and resumed from its checkpoint ends with exactly the statistics of an uninterrupted
run; on 2 DDP processes (gloo, spawned) with a padding `DistributedSampler`, every item is counted once per
epoch, the merged snapshot equals the module's own records, and a 2-rank resume equals an uninterrupted
2-rank run."""
import json
import os

import pytest
import torch
import torch.nn.functional as F

L = pytest.importorskip("lightning")
from lightning.pytorch.callbacks import ModelCheckpoint

from caption_evaluator.integrations.lightning import ItemLossCallback
from caption_evaluator.tracking.snapshots import load_item_stats


class Data(torch.utils.data.Dataset):
    def __init__(self, n=23):
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 8, generator=g), torch.randint(0, 3, (n,), generator=g)
    def __len__(self): return len(self.y)
    def __getitem__(self, i): return {"x": self.x[i], "y": self.y[i], "key": f"item/{i:02d}"}


class Module(L.LightningModule):
    def __init__(self, log_dir=None):
        super().__init__(); torch.manual_seed(0); self.net = torch.nn.Linear(8, 3); self.log_dir = log_dir
    def training_step(self, batch, batch_idx):
        per = F.cross_entropy(self.net(batch["x"]), batch["y"], reduction="none")
        if self.log_dir:                                         # the module's own record of every loss it computed
            with open(os.path.join(self.log_dir, f"seen_{self.global_rank}.jsonl"), "a") as f:
                for k, l in zip(batch["key"], per.tolist()): f.write(json.dumps([k, l, self.current_epoch]) + "\n")
        return {"loss": per.mean(), "per_item_loss": per, "item_keys": batch["key"]}
    def configure_optimizers(self): return torch.optim.SGD(self.parameters(), 0.05)


def fit(root, epochs, ckpt=None, devices=1, log_dir=None):
    trainer = L.Trainer(max_epochs=epochs, default_root_dir=root, accelerator="cpu", devices=devices,
                        strategy="ddp_spawn" if devices > 1 else "auto", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[ItemLossCallback(), ModelCheckpoint(dirpath=os.path.join(root, "ckpt"), save_top_k=-1)],
                        deterministic=True)
    trainer.fit(Module(log_dir), torch.utils.data.DataLoader(Data(), batch_size=4, shuffle=False), ckpt_path=ckpt)
    return root


def final_stats(root):
    snaps = sorted(p for p in os.listdir(os.path.join(root, "item_stats")) if p.endswith(".json"))
    return load_item_stats(os.path.join(root, "item_stats", snaps[-1]))["datasets"]["train"]["item_stats"]


def same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k]["count"] == b[k]["count"], k
        assert a[k]["average_loss"] == pytest.approx(b[k]["average_loss"], rel=1e-6), k


def test_resume_equals_uninterrupted(tmp_path):
    whole = final_stats(fit(str(tmp_path / "whole"), 2))
    part = fit(str(tmp_path / "part"), 1)
    ckpt = os.path.join(part, "ckpt", sorted(os.listdir(os.path.join(part, "ckpt")))[-1])
    resumed = final_stats(fit(part, 2, ckpt=ckpt))
    same(resumed, whole)
    assert all(s["count"] == 2 for s in whole.values())


def test_two_ranks_count_each_item_once_and_resume_exactly(tmp_path):
    logs = tmp_path / "seen"; logs.mkdir()
    whole = final_stats(fit(str(tmp_path / "whole"), 2, devices=2, log_dir=str(logs)))
    assert len(whole) == 23 and all(s["count"] == 2 for s in whole.values())   # 23 items on 2 ranks: 1 padded repeat per epoch, left out
    real = {}                             # DistributedSampler pads the padded list's tail: rank r's records past len(range(r, 23, 2)) repeat others
    for f in logs.iterdir():
        rank = int(f.stem.split("_")[1])
        rows = [json.loads(line) for line in f.read_text().splitlines()]
        for epoch in range(2):
            for k, l, _ in [r for r in rows if r[2] == epoch][:len(range(rank, 23, 2))]: real.setdefault(k, []).append(l)
    assert sorted(real) == sorted(whole) and all(len(v) == 2 for v in real.values())   # each item once per epoch
    for k, s in whole.items():
        assert s["average_loss"] == pytest.approx(sum(real[k]) / 2, rel=1e-6), k
    part = fit(str(tmp_path / "part"), 1, devices=2)
    ckpt = os.path.join(part, "ckpt", sorted(os.listdir(os.path.join(part, "ckpt")))[-1])
    same(final_stats(fit(part, 2, ckpt=ckpt, devices=2)), whole)
