"""Run ai-toolkit's own trainer (in ai-toolkit's environment) with the caption_eval extension installed the way a
user installs it, on a tiny SD 1.5 model and four captioned images; print what the test checks as JSON.
Usage: python tests/aitk_job.py AI_TOOLKIT_SRC HARNESS_DIR WORK_DIR [resume|diffusion|flux|features]  (resume: 3 steps, then a second run to 6 that resumes; diffusion: the UI's DiffusionTrainer;
flux: a tiny FLUX.1 model, built by the harness's script in the shape ai-toolkit's FLUX code expects, trained with flow matching and ai-toolkit's
weighted timesteps; features: one epoch of two datasets, one with masks and caption dropout, one with a loss multiplier, a trigger word and two
batches accumulated per step)"""
import json, os, shutil, sys
from pathlib import Path

src, harness, work = (Path(a) for a in sys.argv[1:4])
mode = sys.argv[4] if len(sys.argv) > 4 else ""
resume = mode == "resume"
sys.path.insert(0, str(harness))
import aitk_cpu_shims  # noqa: F401  (CPU wheels of torchvision/torchaudio: declare what their compiled parts would)
import numpy as np
from PIL import Image

from caption_evaluator.captions.tiny_pipelines import tiny_pipeline
from caption_evaluator.integrations.ai_toolkit import AI_TOOLKIT_DIFFUSION_UID, AI_TOOLKIT_UID, install_extension

UID = AI_TOOLKIT_DIFFUSION_UID if mode == "diffusion" else AI_TOOLKIT_UID

aitk, data, out = work / "ai-toolkit", work / "data", work / "output"
model = work / "model"

def prepare():
    shutil.copytree(src, aitk, ignore=shutil.ignore_patterns(".git"))
    install_extension(aitk)
    if mode == "flux":
        import subprocess
        subprocess.run([sys.executable, str(harness / "scripts" / "make_tiny_flux.py"), str(model)], check=True, capture_output=True,
                       env={**os.environ, "PYTHONPATH": f"{harness}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    else: tiny_pipeline("sd15", model)
    images(data, ["a red disc", "a blue square", "a green disc", "a white square"], data.parent / "masks" if mode == "features" else None)
    if mode == "features": images(work / "data_b", ["[trigger] on a yellow disc", "a black square", "a pink disc", "a grey square"])

rng = np.random.default_rng(0)
def images(folder: Path, captions: list, masks: Path|None = None):
    folder.mkdir()
    if masks: masks.mkdir()
    for i, cap in enumerate(captions):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(cap)
        if masks: Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(masks / f"img{i}.png")

prepare()

os.chdir(aitk); sys.path.insert(0, str(aitk))
import jobs  # noqa: F401  (jobs/__init__ re-exports ExtensionJob, shadowing the submodule's name)
EJ = sys.modules["jobs.ExtensionJob"]
discovered = EJ.get_all_extensions_process_dict()[UID]          # found in extensions/caption_eval, as in a user's run
returned = []
class Oracle(discovered):
    "The same process, noting the loss ai-toolkit itself returns at each step (the test's expected values)."
    def calculate_loss(self, noise_pred, noise, noisy_latents, timesteps, batch, *args, **kwargs):
        loss = super().calculate_loss(noise_pred, noise, noisy_latents, timesteps, batch, *args, **kwargs)
        returned.append([int(self.step_num), [str(f.path) for f in batch.file_items], float(loss), [f.caption == "" for f in batch.file_items]])
        return loss
all_processes = EJ.get_all_extensions_process_dict
EJ.get_all_extensions_process_dict = lambda: {**all_processes(), UID: Oracle}

def datasets() -> list:
    plain = {"folder_path": str(data), "caption_ext": "txt", "caption_dropout_rate": 0.0, "resolution": [64]}
    if mode != "features": return [plain]
    plain["num_workers"] = 0                                    # caption dropout draws from this process's seeded `random`
    return [{**plain, "mask_path": str(data.parent / "masks"), "mask_min_value": 0.1, "caption_dropout_rate": 0.5},
            {**plain, "folder_path": str(work / "data_b"), "loss_multiplier": 2.0}]

def job(steps: int) -> dict:
    process = {"type": UID, "training_folder": str(out), "device": "cpu", "network": {"type": "lora", "linear": 4, "linear_alpha": 4},
               "save": {"dtype": "float32", "save_every": 3, "max_step_saves_to_keep": 2}, "datasets": datasets(),
               **({"trigger_word": "sks"} if mode == "features" else {}),
               "train": {"batch_size": 2, "steps": steps, "gradient_accumulation_steps": 1, "train_unet": True, "train_text_encoder": False,
                         "noise_scheduler": "flowmatch" if mode == "flux" else "ddpm", "optimizer": "adamw", "lr": 1e-4, "dtype": "fp32",
                         **({"timestep_type": "weighted"} if mode == "flux" else {"min_snr_gamma": 5.0}),
                         **({"gradient_accumulation": 2} if mode == "features" else {}),
                         "disable_sampling": True, "skip_first_sample": True},
               "model": {"name_or_path": str(model), "arch": "flux" if mode == "flux" else "sd1", "dtype": "float32", "quantize": False},
               "sample": {"sampler": "flowmatch" if mode == "flux" else "ddpm", "sample_every": 1000, "width": 64, "height": 64, "prompts": ["a red disc"], "neg": "",
                          "seed": 42, "guidance_scale": 4.0, "sample_steps": 2}}
    return {"job": "extension", "config": {"name": "tiny_lora", "process": [process]}, "meta": {"name": "[name]", "version": "1.0"}}

from toolkit.job import run_job
import random
random.seed(0)                                                   # the same captions dropped on every run
for steps in ((3, 6) if resume else (2,) if mode == "features" else (6,)): run_job(job(steps))      # the second run finds the first's checkpoint and resumes
print("AITK_RESULT " + json.dumps({"returned": returned, "folder": str(out / "tiny_lora")}))
