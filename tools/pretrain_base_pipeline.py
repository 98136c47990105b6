"""Pretrain the tiny FLUX pipeline that ships with caption_evaluator (`caption_evaluator/assets/base_pipeline`).

    python tools/pretrain_base_pipeline.py            # about 25 minutes on 2 CPU cores

A `FluxPipeline` of the diffusers format, every part trained here from a fixed seed on 20,000 scenes of the package's
world (`caption_evaluator.demos.world`: four shapes, six colours, two sizes, five positions, one or two objects, three
backgrounds; sentence and tag captions with synonyms). It never sees a crescent: that is the concept the demo's LoRA learns.
1. A 2-level `AutoencoderKL` learns to reconstruct the 32×32 pictures (16×16×4 latents); its shift and scale are set
   from the latents' mean and spread, as FLUX's VAE carries them.
2. The `FluxTransformer2DModel`, the CLIP text encoder (character-level, pooled) and the T5 encoder (a word-level
   unigram vocabulary of the world's words, characters for every other word) train together on the rectified-flow
   loss of diffusers' FLUX recipe: x_t = (1 − σ)·x0 + σ·ε, target ε − x0, σ logit-normal, 10 % of captions dropped.
The log (`training_log.json` in the pipeline folder) holds the settings, the loss curve, the time and each weight
file's SHA-256, which the tests check.
"""
import argparse, hashlib, json, math, tempfile, time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from caption_evaluator.captions.tiny_pipelines import _CHARS, _clip_tokenizer as clip_tokenizer   # the character-level CLIP tokenizer the tiny pipelines use
from caption_evaluator.demos.world import SCENE_WORDS, scene_caption, world_samples

_FUNCTION_WORDS = "a an the of on in at with and to picture photo image side background object objects".split()


def world_vocabulary() -> list[str]:
    "Every word the world's captions use (each word of a multi-word synonym, plurals), and common function words."
    words = set(_FUNCTION_WORDS) | {str(n) for n in range(10)}
    for values in SCENE_WORDS.values():
        for ws in values.values():
            for w in ws:
                for part in w.split(): words |= {part, part + "s", part + "es"}
    return sorted(words)


def t5_tokenizer(max_length: int):
    "A T5 unigram tokenizer: the world's words whole, any other word spelled out in characters, whitespace runs collapsed; `</s>` appended."
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -8.0)]
    pieces += [("▁" + w, -2.0) for w in world_vocabulary()] + [(c, -10.0) for c in _CHARS] + [("▁" + c, -9.0) for c in _CHARS]
    tk = Tokenizer(models.Unigram(pieces, unk_id=2))
    tk.normalizer = normalizers.Sequence([normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()])   # runs of spaces are one, as SentencePiece's T5 has them
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tk, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0,
                           model_max_length=max_length)


def build_pipeline(tmp: Path, t5_tokens: int = 32, clip_chars: int = 80):
    "The untrained pipeline: tokenizers, CLIP and T5 encoders, a 2-level VAE, a FLUX transformer of width 64."
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel
    clip, t5 = clip_tokenizer(tmp / "clip", clip_chars), t5_tokenizer(t5_tokens)
    n = len(clip)
    clip_enc = CLIPTextModel(CLIPTextConfig(vocab_size=n, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                            max_position_embeddings=clip_chars, projection_dim=64, bos_token_id=n - 2, eos_token_id=n - 1,
                                            pad_token_id=n - 1))
    t5_enc = T5EncoderModel(T5Config(vocab_size=len(t5), d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                                     relative_attention_num_buckets=16, is_encoder_decoder=False, pad_token_id=0, eos_token_id=1))
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32), layers_per_block=1,
                                  down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                                  norm_num_groups=8, sample_size=32, scaling_factor=1.0, shift_factor=0.0)
    tr = diffusers.FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=32,
                                          num_attention_heads=2, joint_attention_dim=64, pooled_projection_dim=64, guidance_embeds=False,
                                          axes_dims_rope=(8, 12, 12))
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_image_seq_len=64, max_image_seq_len=256,
                                                      base_shift=0.5, max_shift=1.15)
    return diffusers.FluxPipeline(scheduler=sched, vae=vae, text_encoder=clip_enc, tokenizer=clip, text_encoder_2=t5_enc, tokenizer_2=t5,
                                  transformer=tr)


def _lr(step: int, steps: int, peak: float, warmup: int = 200) -> float:
    return peak * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))


def train_vae(vae, pics: torch.Tensor, steps: int, batch: int, g: torch.Generator, log: list) -> None:
    "Reconstruction (MSE) with a light KL term; then shift and scale set so the latents have mean 0 and spread 1."
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    vae.train()
    for step in range(steps):
        for grp in opt.param_groups: grp["lr"] = _lr(step, steps, 2e-3, 100)
        x = pics[torch.randint(len(pics), (batch,), generator=g)]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=g)).sample
        loss = F.mse_loss(rec, x) + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        if step % 100 == 0 or step == steps - 1:
            log.append({"stage": "vae", "step": step, "loss": round(loss.item(), 6)}); print(log[-1], flush=True)
    vae.eval()


@torch.no_grad()
def encode_latents(vae, pics: torch.Tensor, batch: int = 500) -> torch.Tensor:
    "Every picture's latent mode, shifted and scaled as the VAE's config now says (FLUX: (z − shift)·scale)."
    z = torch.cat([vae.encode(pics[i:i + batch]).latent_dist.mode() for i in range(0, len(pics), batch)])
    vae.register_to_config(shift_factor=float(z.mean()), scaling_factor=float(1 / z.std()))
    return (z - vae.config.shift_factor) * vae.config.scaling_factor


def flow_step(pipe, x0: torch.Tensor, captions: list[str], g: torch.Generator) -> torch.Tensor:
    "diffusers' FLUX training loss of one batch: logit-normal σ, x_t = (1 − σ)·x0 + σ·ε, target ε − x0, the pipeline's own prompt encoding."
    b, c, h, w = x0.shape
    sigma = torch.sigmoid(torch.randn(b, generator=g))
    eps = torch.randn(x0.shape, generator=g)
    x_t = (1 - sigma.view(-1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1) * eps
    embeds, pooled, text_ids = pipe.encode_prompt(captions, prompt_2=None, max_sequence_length=pipe.tokenizer_2.model_max_length)
    pred = pipe.transformer(hidden_states=pipe._pack_latents(x_t, b, c, h, w), timestep=sigma, guidance=None, pooled_projections=pooled,
                            encoder_hidden_states=embeds, txt_ids=text_ids, img_ids=pipe._prepare_latent_image_ids(b, h // 2, w // 2, x0.device, x0.dtype)).sample
    pred = pipe._unpack_latents(pred, h * pipe.vae_scale_factor, w * pipe.vae_scale_factor, pipe.vae_scale_factor)
    return F.mse_loss(pred, eps - x0)


def train_flow(pipe, latents: torch.Tensor, scenes, steps: int, batch: int, seed: int, log: list, checkpoint: str|None = None) -> None:
    "The transformer and both text encoders, on captions drawn afresh each step (synonyms, order, style), 10 % dropped."
    params = [p for m in (pipe.transformer, pipe.text_encoder, pipe.text_encoder_2) for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    g, rng = torch.Generator().manual_seed(seed), np.random.default_rng(seed)
    for m in (pipe.transformer, pipe.text_encoder, pipe.text_encoder_2): m.train()
    t0, avg = time.perf_counter(), None
    for step in range(steps):
        for grp in opt.param_groups: grp["lr"] = _lr(step, steps, 1e-3)
        idx = torch.randint(len(latents), (batch,), generator=g)
        caps = ["" if rng.random() < 0.1 else scene_caption(scenes[i], rng, ("sentence", "tags")[int(rng.integers(2))]) for i in idx.tolist()]
        loss = flow_step(pipe, latents[idx], caps, g)
        opt.zero_grad(set_to_none=True); loss.backward(); torch.nn.utils.clip_grad_norm_(params, 1.0); opt.step()
        avg = loss.item() if avg is None else 0.98 * avg + 0.02 * loss.item()
        if step % 250 == 0 or step == steps - 1:
            log.append({"stage": "flow", "step": step, "loss": round(avg, 6), "seconds": round(time.perf_counter() - t0, 1)}); print(log[-1], flush=True)
        if checkpoint and step % 2000 == 1999: pipe.save_pretrained(checkpoint)
    for m in (pipe.transformer, pipe.text_encoder, pipe.text_encoder_2): m.eval()


def weight_hashes(folder: Path) -> dict:
    "SHA-256 of every weight file of a saved pipeline, by its path in the folder."
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*.safetensors"))}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="caption_evaluator/assets/base_pipeline", help="the pipeline folder written")
    p.add_argument("--pictures", type=int, default=20000); p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vae-steps", type=int, default=600); p.add_argument("--steps", type=int, default=8000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--checkpoint", default=None, help="also save the pipeline here every 2,000 steps (to look at it while training goes on)")
    a = p.parse_args()
    torch.manual_seed(a.seed); torch.set_num_threads(max(1, torch.get_num_threads()))
    t0, log = time.perf_counter(), []
    pics_u8, _, scenes = world_samples(a.pictures, seed=a.seed, style="mixed")
    pics = torch.from_numpy(pics_u8).permute(0, 3, 1, 2).float() / 127.5 - 1
    with tempfile.TemporaryDirectory() as tmp: pipe = build_pipeline(Path(tmp))
    train_vae(pipe.vae, pics, a.vae_steps, 32, torch.Generator().manual_seed(a.seed + 1), log)
    latents = encode_latents(pipe.vae, pics)
    train_flow(pipe, latents, scenes, a.steps, a.batch, a.seed + 2, log, a.checkpoint)
    out = Path(a.out); pipe.save_pretrained(out)
    info = {"command": "python tools/pretrain_base_pipeline.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items() if k != "checkpoint"),
            "seconds": round(time.perf_counter() - t0), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "parameters": {n: sum(x.numel() for x in getattr(pipe, n).parameters()) for n in ("transformer", "text_encoder", "text_encoder_2", "vae")},
            "log": log, "sha256": weight_hashes(out)}
    (out / "training_log.json").write_text(json.dumps(info, indent=1) + "\n")
    print(json.dumps({k: v for k, v in info.items() if k != "log"}, indent=1))


if __name__ == "__main__":
    main()
