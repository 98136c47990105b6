"""The caption probe on a real diffusers model: a tiny `UNet2DConditionModel` built from a config, trained a few
steps with a `DDPMScheduler`, probed with `probe_captions`. Expected values come from the scheduler's own
`add_noise` and the UNet called one item and one caption at a time."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from caption_evaluator.captions.denoiser import ddpm_alphas_cumprod
from caption_evaluator.captions.engine import probe_noise
from caption_evaluator.captions.probe import probe_captions


def tiny_unet():
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8, attention_head_dim=4, norm_num_groups=8)


@pytest.fixture(scope="module")
def trained():
    unet, sched = tiny_unet(), diffusers.DDPMScheduler(num_train_timesteps=1000)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(12, 1, 8, 8, generator=g)
    conds = torch.randn(12, 3, 8, generator=g)                          # [N, tokens, cross_attention_dim]
    opt = torch.optim.Adam(unet.parameters(), 1e-3)
    for _ in range(3):
        t = torch.randint(0, 1000, (12,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        loss = (unet(sched.add_noise(x0, eps, t), t, encoder_hidden_states=conds).sample - eps).pow(2).mean()
        opt.zero_grad(); loss.backward(); opt.step()
    return unet.train(), sched, x0, conds


def test_schedule_matches_diffusers():
    torch.testing.assert_close(ddpm_alphas_cumprod(), diffusers.DDPMScheduler(num_train_timesteps=1000).alphas_cumprod)


def test_probe_matches_one_by_one_unet_calls(trained):
    unet, sched, x0, conds = trained
    empty, alts = torch.zeros(3, 8), conds.roll(1, 0)[:, None].repeat(1, 2, 1, 1) * torch.tensor([1.0, -1.0])[None, :, None, None]
    denoise = lambda x_t, t, c: unet(x_t, t, encoder_hidden_states=c).sample
    ts = [200, 600]
    r = probe_captions(denoise, x0, conds, empty, alts, sched.alphas_cumprod, timesteps=ts, noise_draws=1, refine_draws=1,
                       batch_size=5, progress=False)
    assert unet.training                                               # the module's mode is put back
    def loss(i, cond, d, j):
        eps = probe_noise(0, i, x0.shape[1:], 2, len(ts))[d, j]
        t = torch.tensor([ts[j]])
        with torch.no_grad():
            unet.eval()
            pred = unet(sched.add_noise(x0[i:i + 1], eps[None], t), t, encoder_hidden_states=cond[None]).sample
            unet.train()
        return float((pred[0] - eps).pow(2).mean())
    caps = lambda i: [conds[i], empty, alts[i, 0], alts[i, 1]]
    raw = torch.tensor([[[loss(i, c, 0, j) for j in range(2)] for c in caps(i)] for i in range(12)])   # [N, 4, T]
    per_t = raw[:, 0].mean(0)
    L = (raw / per_t).mean(2)
    best = L[:, 2:].argmin(1)
    torch.testing.assert_close(r.empty_gap, L[:, 0] - L[:, 1], atol=1e-4, rtol=1e-4)
    assert r.best_alternative_index.tolist() == best.tolist()
    own2 = torch.tensor([sum(loss(i, conds[i], 1, j) / per_t[j] for j in range(2)) / 2 for i in range(12)])
    alt2 = torch.tensor([sum(loss(i, alts[i, best[i]], 1, j) / per_t[j] for j in range(2)) / 2 for i in range(12)])
    swap = (L[:, 0] + own2) / 2 - (L[:, 2:].gather(1, best[:, None])[:, 0] + alt2) / 2
    torch.testing.assert_close(r.swap_margin, swap, atol=1e-4, rtol=1e-4)
    assert r.forward_passes == 4 * 2 * 1 + 2 * 2 * 1


def test_probe_is_deterministic_across_batch_sizes(trained):
    unet, sched, x0, conds = trained
    alts = conds.flip(0)[:, None]
    denoise = lambda x_t, t, c: unet(x_t, t, encoder_hidden_states=c).sample
    a = probe_captions(denoise, x0, conds, torch.zeros(3, 8), alts, sched.alphas_cumprod, batch_size=3, progress=False)
    b = probe_captions(denoise, x0, conds, torch.zeros(3, 8), alts, sched.alphas_cumprod, batch_size=64, progress=False)
    assert a.timesteps == b.timesteps
    torch.testing.assert_close(a.swap_margin, b.swap_margin, atol=1e-5, rtol=1e-5)


def test_flow_probe_matches_scale_noise_and_the_sd3_training_target(trained):
    "A flow-matching schedule read from diffusers' scheduler: x_t from its `scale_noise`, the target `noise - model_input` of"
    "diffusers' SD3 training script, the model timestep `scheduler.timesteps[index]`; the UNet's output object read as is."
    unet, _, x0, conds = trained
    flow = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    empty, alts = torch.zeros(3, 8), conds.roll(1, 0)[:, None]
    denoise = lambda x_t, t, c: unet(x_t, t, encoder_hidden_states=c)     # a UNet2DConditionOutput, not a tensor
    ts = [250, 800]
    r = probe_captions(denoise, x0, conds, empty, alts, flow, timesteps=ts, refine_draws=0, batch_size=5, progress=False)
    def loss(i, cond, j):
        eps = probe_noise(0, i, x0.shape[1:], 1, len(ts))[0, j]
        t = flow.timesteps[1000 - ts[j]][None]                             # training timestep ts[j] as diffusers numbers it
        with torch.no_grad():
            unet.eval()
            pred = unet(flow.scale_noise(x0[i:i + 1], t, eps[None]), t, encoder_hidden_states=cond[None]).sample
            unet.train()
        return float((pred[0] - (eps - x0[i])).pow(2).mean())
    raw = torch.tensor([[[loss(i, c, j) for j in range(2)] for c in (conds[i], empty, alts[i, 0])] for i in range(12)])
    torch.testing.assert_close(r.losses, (raw / raw[:, 0].mean(0)).mean(2), atol=1e-4, rtol=1e-4)


def test_a_sigma_table_is_not_taken_for_alphas_cumprod(trained):
    unet, _, x0, conds = trained
    denoise = lambda x_t, t, c: unet(x_t, t, encoder_hidden_states=c).sample
    with pytest.raises(ValueError, match="flow-matching"):
        probe_captions(denoise, x0, conds, torch.zeros(3, 8), conds.flip(0)[:, None], diffusers.FlowMatchEulerDiscreteScheduler().sigmas,
                       progress=False)
