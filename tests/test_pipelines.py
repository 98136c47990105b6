"""`probe_pipeline` on the four diffusers families, built tiny (`tiny_pipeline`), saved and loaded with `from_pretrained`.
Each per-pair loss is recomputed one item and one caption at a time from diffusers itself: the pipeline's own
`encode_prompt` and VAE, the scheduler's `add_noise` / `scale_noise` on a fresh copy (the training table), and
the denoiser called as the pipeline's `__call__` calls it (FLUX: `_pack_latents`, `timestep / 1000`, guidance, ids)."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from caption_evaluator.captions.pipelines import pipeline_parts, probe_pipeline
from caption_evaluator.captions.engine import probe_noise
from caption_evaluator.captions.tiny_pipelines import PIPELINE_FAMILIES, tiny_pipeline

CAPTIONS = ["a red disc", "a blue disc", "a red square"]
SWAP = lambda c: [c.replace("red", "green"), c.replace("disc", "star")] if "red" in c else [c.replace("blue", "red")]
TS = [250, 750]


@pytest.fixture(scope="module", params=PIPELINE_FAMILIES)
def family_pipe(request, tmp_path_factory):
    folder = tiny_pipeline(request.param, tmp_path_factory.mktemp(request.param) / "pipe", seed=1)
    return request.param, diffusers.DiffusionPipeline.from_pretrained(folder)


def oracle_latents(pipe, images):
    z = pipe.vae.encode(pipe.image_processor.preprocess(images)).latent_dist.mode()
    return (z - (pipe.vae.config.shift_factor or 0.0)) * pipe.vae.config.scaling_factor


def encode_one(fam, pipe, caption):
    if fam == "sd15": return pipe.encode_prompt([caption], "cpu", 1, False)[0], None
    if fam == "sdxl":
        pe, _, pooled, _ = pipe.encode_prompt(prompt=[caption], device="cpu", do_classifier_free_guidance=False); return pe, pooled
    if fam == "sd3":
        pe, _, pooled, _ = pipe.encode_prompt(prompt=[caption], prompt_2=None, prompt_3=None, device="cpu", do_classifier_free_guidance=False,
                                             max_sequence_length=16); return pe, pooled
    pe, pooled, _ = pipe.encode_prompt(prompt=[caption], prompt_2=None, device="cpu", max_sequence_length=16); return pe, pooled


def call_as_pipeline(fam, pipe, x_t, t, pe, pooled, guidance):
    "The denoiser call of each pipeline's `__call__`, for one item; returns the prediction in the unpacked latent layout."
    if fam == "sd15": return pipe.unet(x_t, t, encoder_hidden_states=pe).sample
    if fam == "sdxl":
        ids = pipe._get_add_time_ids((16, 16), (0, 0), (16, 16), pe.dtype, text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
        return pipe.unet(x_t, t, encoder_hidden_states=pe, added_cond_kwargs={"text_embeds": pooled, "time_ids": ids}).sample
    if fam == "sd3": return pipe.transformer(hidden_states=x_t, timestep=t, encoder_hidden_states=pe, pooled_projections=pooled).sample
    b, c, h, w = x_t.shape
    packed = pipe._pack_latents(x_t, b, c, h, w)
    out = pipe.transformer(hidden_states=packed, timestep=t / 1000, guidance=torch.full([1], guidance), pooled_projections=pooled,
                           encoder_hidden_states=pe, txt_ids=torch.zeros(pe.shape[1], 3), img_ids=pipe._prepare_latent_image_ids(b, h // 2, w // 2, "cpu", x_t.dtype)).sample
    return pipe._unpack_latents(out, 16, 16, pipe.vae_scale_factor)


def oracle_loss(fam, pipe, x0, eps, t, caption, guidance):
    pe, pooled = encode_one(fam, pipe, caption)
    if fam in ("sd15", "sdxl"):                 # diffusers' SD/SDXL training scripts noise with a DDPMScheduler read from the scheduler's config
        fresh, tt = diffusers.DDPMScheduler.from_config(pipe.scheduler.config), torch.tensor([t])
        x_t, target = fresh.add_noise(x0, eps, tt), eps
    else:
        fresh = type(pipe.scheduler).from_config(pipe.scheduler.config)         # the training table, not an inference one
        tt = fresh.timesteps[1000 - t][None]                                    # training timestep t as diffusers numbers it (σ·1000)
        x_t, target = fresh.scale_noise(x0, tt, eps), eps - x0
    with torch.no_grad(): pred = call_as_pipeline(fam, pipe, x_t, tt, pe, pooled, guidance)
    return float((pred - target).pow(2).mean())


def check_against_oracle(fam, pipe, guidance=3.5):
    "probe_pipeline's normalised screening losses against the one-by-one oracle, for every own caption and every edit."
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))        # RGB in [0, 1]
    r = probe_pipeline(pipe, images, CAPTIONS, SWAP, timesteps=TS, refine_draws=0, guidance=guidance, max_sequence_length=16,
                       batch_size=3, progress=False)
    lat = oracle_latents(pipe, images)
    torch.testing.assert_close(pipeline_parts(pipe).encode_images(images), lat)
    def raw(i, caption): return [oracle_loss(fam, pipe, lat[i:i + 1], probe_noise(0, i, lat.shape[1:], 1, 2)[0, j][None], t, caption, guidance)
                                 for j, t in enumerate(TS)]
    own = torch.tensor([raw(i, c) for i, c in enumerate(CAPTIONS)])                # [N, T]
    scale = own.mean(0)
    torch.testing.assert_close(r.own_loss, (own / scale).mean(1), atol=1e-4, rtol=1e-4)
    alt = torch.tensor([raw(i, cap) for i, cap, _ in r.alternatives])
    torch.testing.assert_close(r.alternative_losses, (alt / scale).mean(1), atol=1e-4, rtol=1e-4)
    return r


def test_each_pair_loss_equals_diffusers_one_by_one(family_pipe):
    check_against_oracle(*family_pipe)


def test_a_loaded_lora_is_probed_as_loaded(tmp_path):
    "A LoRA saved with `save_lora_weights` and loaded with `load_lora_weights`: the probe runs the adapted UNet, as the oracle does."
    peft = pytest.importorskip("peft")
    from peft.utils import get_peft_model_state_dict
    folder = tiny_pipeline("sd15", tmp_path / "sd15", seed=1)
    trainer = diffusers.DiffusionPipeline.from_pretrained(folder)
    torch.manual_seed(0)
    trainer.unet.add_adapter(peft.LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    for n, p in trainer.unet.named_parameters():
        if "lora_B" in n: p.data.normal_(0, 0.5)                                   # a trained LoRA, not the identity it starts as
    diffusers.StableDiffusionPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=get_peft_model_state_dict(trainer.unet))
    pipe, base = diffusers.DiffusionPipeline.from_pretrained(folder), diffusers.DiffusionPipeline.from_pretrained(folder)
    pipe.load_lora_weights(tmp_path / "lora")
    with_lora = check_against_oracle("sd15", pipe)
    without = probe_pipeline(base, torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2)), CAPTIONS, SWAP, timesteps=TS,
                             refine_draws=0, progress=False)
    assert not torch.allclose(with_lora.alternative_losses, without.alternative_losses, atol=1e-3)


def test_half_precision_pipeline_is_probed_in_its_dtype(tmp_path):
    "A bfloat16 pipeline (as `dtype=torch.bfloat16` loads it) is probed in bfloat16 and left so; its scores follow float32's."
    folder = tiny_pipeline("flux", tmp_path / "flux", seed=1)
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    kw = dict(timesteps=TS, refine_draws=0, max_sequence_length=16, progress=False)
    full = probe_pipeline(diffusers.DiffusionPipeline.from_pretrained(folder), images, CAPTIONS, SWAP, **kw)
    half_pipe = diffusers.DiffusionPipeline.from_pretrained(folder, dtype=torch.bfloat16)
    half = probe_pipeline(half_pipe, images, CAPTIONS, SWAP, **kw)
    assert next(half_pipe.transformer.parameters()).dtype == torch.bfloat16
    assert torch.isfinite(half.alternative_losses).all()
    torch.testing.assert_close(half.alternative_losses.float(), full.alternative_losses, atol=0.05, rtol=0.05)


def test_modes_and_weights_are_left_as_they_were(family_pipe):
    fam, pipe = family_pipe
    model = pipe.unet if fam in ("sd15", "sdxl") else pipe.transformer
    before = [p.clone() for p in model.parameters()]
    model.train()
    probe_pipeline(pipe, torch.zeros(2, 3, 16, 16), CAPTIONS[:2], SWAP, timesteps=[500], refine_draws=0, max_sequence_length=16, progress=False)
    assert model.training and all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    model.eval()
