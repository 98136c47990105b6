"""Per-sample diffusion losses against the trainers: a faithful re-implementation of ai-toolkit's
`SDTrainer.calculate_loss` reduction (ostris/ai-toolkit @ 27a03a9, lines 904-1013) and diffusers' own
`compute_snr` with the min-SNR formula of `train_text_to_image.py`; a real `UNet2DConditionModel` trained a
few steps with the tracker; ai-toolkit's resume and cleanup globs against the snapshot folder."""
import glob
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from caption_evaluator.integrations.diffusion_loss import (ai_toolkit_snapshot_dir, diffusion_per_sample_loss, min_snr_weights,
                                              record_ai_toolkit_batch)
from caption_evaluator.tracking.tracker import ItemLossTracker

diffusers = pytest.importorskip("diffusers")
from diffusers.training_utils import compute_snr


def ai_toolkit_reference(pred, target, timesteps, scheduler, loss_type, mask, loss_multiplier, prior_loss, min_snr_gamma):
    "ai-toolkit's calculate_loss from the element-wise loss to `loss.mean()`, step by step as its source reads."
    if loss_type == "pseudo_huber":
        diff = pred.float() - target.float()
        c = 0.01
        loss = torch.sqrt(diff.pow(2) + c ** 2) - c
    elif loss_type == "mae": loss = torch.nn.functional.l1_loss(pred.float(), target.float(), reduction="none")
    else: loss = torch.nn.functional.mse_loss(pred.float(), target.float(), reduction="none")
    mask_multiplier = torch.ones((pred.shape[0], 1, 1, 1)) if mask is None else mask / mask.mean()
    loss = loss * mask_multiplier
    loss = loss.mean([1, 2, 3])
    loss = loss * loss_multiplier
    if prior_loss is not None: loss = loss + prior_loss
    if min_snr_gamma:                                       # toolkit/train_tools.py apply_snr_weight
        all_snr = (scheduler.alphas_cumprod / (1 - scheduler.alphas_cumprod))
        offset = 1 if scheduler.timesteps[0] == 1000 else 0
        snr = torch.stack([all_snr[(t - offset).int()] for t in timesteps])
        snr_weight = torch.minimum(min_snr_gamma / snr, torch.ones_like(snr)).float()
        loss = loss * snr_weight
    return loss, loss.mean()


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5), st.sampled_from(["mse", "mae", "pseudo_huber"]), st.booleans(), st.booleans(), st.sampled_from([None, 1.0, 5.0]),
       st.integers(0, 10_000))
def test_matches_ai_toolkit(b, loss_type, masked, prior, gamma, seed):
    g = torch.Generator().manual_seed(seed)
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000)
    pred, target = torch.randn(b, 4, 6, 6, generator=g), torch.randn(b, 4, 6, 6, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g)
    mask = (torch.rand(b, 1, 6, 6, generator=g) > 0.3).float().expand(b, 4, 6, 6) + 0.01 if masked else None
    mult = torch.rand(b, generator=g) + 0.5
    prior_loss = torch.rand(b, generator=g) if prior else None
    ref_vec, ref_loss = ai_toolkit_reference(pred, target, t, sched, loss_type, mask, mult, prior_loss, gamma)
    w = min_snr_weights(t, sched.alphas_cumprod, gamma, style="ai-toolkit") if gamma else None
    got = diffusion_per_sample_loss(pred, target, loss_type=loss_type, mask=mask, loss_multiplier=mult, prior_loss=prior_loss, weights=w)
    torch.testing.assert_close(got, ref_vec, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.mean(), ref_loss, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_matches_diffusers_min_snr(prediction_type):
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    g = torch.Generator().manual_seed(3)
    t = torch.randint(0, 1000, (16,), generator=g)
    pred, target = torch.randn(16, 4, 8, 8, generator=g), torch.randn(16, 4, 8, 8, generator=g)
    snr = compute_snr(sched, t)                                          # the example script's recipe
    mse_loss_weights = torch.stack([snr, 5.0 * torch.ones_like(t)], dim=1).min(dim=1)[0]
    mse_loss_weights = mse_loss_weights / snr if prediction_type == "epsilon" else mse_loss_weights / (snr + 1)
    loss = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=list(range(1, 4))) * mse_loss_weights
    w = min_snr_weights(t, sched.alphas_cumprod, 5.0, prediction_type=prediction_type)
    torch.testing.assert_close(w, mse_loss_weights)
    got = diffusion_per_sample_loss(pred, target, weights=w, style="diffusers")
    torch.testing.assert_close(got.mean(), loss.mean())


def test_real_unet_training_is_tracked_exactly(tmp_path):
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(16, 32),
                                          down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                          cross_attention_dim=8, attention_head_dim=4, norm_num_groups=8)
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000)
    opt = torch.optim.SGD(unet.parameters(), 1e-3)
    tracker = ItemLossTracker(tmp_path, "unet", timestep_range=(0, 1000))
    g = torch.Generator().manual_seed(1)
    x0, cond = torch.randn(6, 1, 8, 8, generator=g), torch.randn(6, 3, 8, generator=g)
    seen = {}
    for step in range(3):
        idx = torch.randperm(6, generator=g)[:4]
        t = torch.randint(0, 1000, (4,), generator=g)
        eps = torch.randn(4, 1, 8, 8, generator=g)
        pred = unet(sched.add_noise(x0[idx], eps, t), t, encoder_hidden_states=cond[idx]).sample
        per = diffusion_per_sample_loss(pred, eps, weights=min_snr_weights(t, sched.alphas_cumprod, 5.0))
        loss = per.mean()
        brute = (F.mse_loss(pred, eps, reduction="none").mean((1, 2, 3)) * min_snr_weights(t, sched.alphas_cumprod, 5.0)).mean()
        torch.testing.assert_close(loss, brute)
        opt.zero_grad(); loss.backward(); opt.step()
        keys = [f"img/{i}.png" for i in idx.tolist()]
        tracker.record("train", keys, per, step=step, timesteps=t)
        for k, v in zip(keys, per.tolist()): seen.setdefault(k, []).append(v)
    tracker.flush()
    stats = tracker.aggregator.item_stats("train")
    for k, vals in seen.items():
        assert stats[k]["count"] == len(vals)
        assert stats[k]["average_loss"] == pytest.approx(float(np.mean(vals)), rel=1e-6)


def test_ai_toolkit_recording_and_snapshot_folder(tmp_path):
    save_root = tmp_path / "my_lora"
    save_root.mkdir()
    (save_root / "my_lora_000000100.safetensors").write_bytes(b"weights")
    tracker = ItemLossTracker(ai_toolkit_snapshot_dir(save_root), "my_lora", timestep_range=(0, 1000))
    batch = SimpleNamespace(file_items=[SimpleNamespace(path=f"/data/img{i}.jpg") for i in range(3)])
    record_ai_toolkit_batch(tracker, batch, torch.tensor([0.1, 0.2, 0.3]), torch.tensor([10, 500, 900]), step=120)
    snap = tracker.on_save(120)
    assert snap.parent == save_root / ".item_stats" and snap.is_file()
    name = "my_lora"                                                     # BaseSDTrainProcess.get_latest_save_path and clean_up_saves
    picked = [p for pat in (f"{name}*.safetensors", f"{name}*.pt", f"{name}*", f"{name}_*") for p in glob.glob(os.path.join(save_root, pat))]
    assert picked and all(".item_stats" not in p for p in picked)
    assert max(picked, key=os.path.getctime).endswith(".safetensors")
    with pytest.raises(ValueError, match="single_item_batching"):
        record_ai_toolkit_batch(tracker, batch, torch.tensor([0.1]), torch.tensor([10]))


@pytest.mark.parametrize("scheme", ["sigma_sqrt", "cosmap", "logit_normal"])
def test_flow_step_matches_diffusers_sd3_script(scheme, tmp_path):
    "One training step of a tiny SD3 transformer as diffusers' train_dreambooth_lora_sd3.py computes it: sigmas from the"
    "scheduler copy's table, x_t = (1 - σ) x0 + σ ε, target noise - model_input, weighting from compute_loss_weighting_for_sd3."
    from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3
    from caption_evaluator.captions.schedules import as_schedule
    from caption_evaluator.captions.tiny_pipelines import tiny_pipeline
    from caption_evaluator.integrations.diffusion_loss import flow_loss_weights
    pipe = diffusers.DiffusionPipeline.from_pretrained(tiny_pipeline("sd3", tmp_path / "sd3"))
    sched = type(pipe.scheduler).from_config(pipe.scheduler.config)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    emb, pooled = torch.randn(4, 7, 64, generator=g), torch.randn(4, 64, generator=g)
    u = compute_density_for_timestep_sampling(weighting_scheme=scheme, batch_size=4, logit_mean=0.0, logit_std=1.0, mode_scale=1.29)
    indices = (u * sched.config.num_train_timesteps).long()
    timesteps = sched.timesteps[indices]
    sigmas = sched.sigmas[indices].flatten()
    x_t = (1.0 - sigmas[:, None, None, None]) * x0 + sigmas[:, None, None, None] * noise
    with torch.no_grad():
        pred = pipe.transformer(hidden_states=x_t, timestep=timesteps, encoder_hidden_states=emb, pooled_projections=pooled).sample
    weighting = compute_loss_weighting_for_sd3(weighting_scheme=scheme, sigmas=sigmas[:, None, None, None])
    script = torch.mean((weighting.float() * (pred.float() - (noise - x0).float()) ** 2).reshape(4, -1), 1).mean()
    ours_t = 1000 - indices                                                  # the same draws as training timesteps 1..T of FlowSchedule
    _, target = as_schedule(sched).noisy(x0, noise, ours_t)
    per = diffusion_per_sample_loss(pred, target, weights=flow_loss_weights(sigmas, scheme), style="diffusers")
    torch.testing.assert_close(per.mean(), script, atol=1e-6, rtol=1e-5)
