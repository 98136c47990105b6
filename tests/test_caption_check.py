"""`caption-eval check` and `check_captions` end to end on a tiny SD 1.5 pipeline (random weights, saved and loaded
with `from_pretrained`) and a hand-made ai-toolkit folder with broken files; the LoRA path with a LoRA saved by
diffusers' `save_lora_weights`; report.html opened in headless Chromium (Debian's, driven by Playwright).

A random-weight model cannot read captions, whatever they say: the check must say so and call nothing suspect."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

diffusers = pytest.importorskip("diffusers")

from caption_evaluator.captions.check import check_captions
from caption_evaluator.captions.tiny_pipelines import tiny_pipeline
from caption_evaluator.cli import main

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium") if p and Path(p).exists()), None)
COLOURS, SHAPES = ["red", "blue", "green"], ["disc", "square", "triangle"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    "Twelve images with sentence captions (a [trigger] in one), a corrupt image, a caption that is not UTF-8, an image with no caption."
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)).save(root / f"{i:02d}.png")
        cap = f"a {COLOURS[i % 3]} {SHAPES[i // 3 % 3]} on a {COLOURS[(i + 1) % 3]} background" if i % 2 else f"{COLOURS[i % 3]} {SHAPES[i // 3 % 3]} at the top"
        (root / f"{i:02d}.txt").write_text(("[trigger] " if i == 0 else "") + cap)
    (root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken"); (root / "bad.txt").write_text("a red disc")
    Image.new("RGB", (8, 8)).save(root / "latin.png"); (root / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    Image.new("RGB", (8, 8)).save(root / "nocap.png")
    return root


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory): return tiny_pipeline("sd15", tmp_path_factory.mktemp("pipe") / "sd15", seed=1)


@pytest.fixture(scope="module")
def cli_run(folder, pipeline, tmp_path_factory, capsys_module=None):
    out = tmp_path_factory.mktemp("check") / "out"
    code = main(["check", str(folder), "--pipeline", str(pipeline), "--trigger", "sks", "--out", str(out), "--resolution", "16"])
    return code, out


def test_the_command_writes_json_csv_and_report(cli_run, folder):
    code, out = cli_run
    assert code == 0
    doc = json.loads((out / "captions.json").read_text())
    assert doc["schema"] == "caption_evaluator/caption_check@1"
    assert sorted(r["key"] for r in doc["items"]) == [f"{i:02d}.png" for i in range(12)]
    assert next(r for r in doc["items"] if r["key"] == "00.png")["caption"].startswith("sks ")          # the trigger, ai-toolkit's rule
    assert sorted(p["file"] for p in doc["problems"]) == ["bad.png", "latin.txt", "nocap.png"]
    assert sorted(r["rank"] for r in doc["items"]) == list(range(1, 13))
    lines = (out / "captions.csv").read_text().splitlines()
    assert lines[0].startswith("rank,key,score") and len(lines) == 13
    assert (out / "report.html").is_file()


def test_a_model_that_reads_no_caption_gets_no_suspect(cli_run):
    "Random weights: the check says the model does not read the captions, and lists nothing as a finding."
    doc = json.loads((cli_run[1] / "captions.json").read_text())
    assert doc["reads_captions"]["reads"] is False
    assert not any(r["suspect"] for r in doc["items"])
    assert all(s["verdict"] != "checked" for s in doc["slots"].values())


def test_a_missing_pipeline_folder_is_named(folder, tmp_path, capsys):
    assert main(["check", str(folder), "--pipeline", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 1
    assert "pipeline" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_a_lora_is_probed_after_the_base_and_unloaded(folder, pipeline, tmp_path):
    "The base pipeline's scores do not change with --lora (it is probed first and the LoRA is unloaded after); the LoRA'd scores differ."
    peft = pytest.importorskip("peft")
    from peft.utils import get_peft_model_state_dict
    trainer = diffusers.DiffusionPipeline.from_pretrained(pipeline)
    torch.manual_seed(0)
    trainer.unet.add_adapter(peft.LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    for n, p in trainer.unet.named_parameters():
        if "lora_B" in n: p.data.normal_(0, 0.5)
    diffusers.StableDiffusionPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=get_peft_model_state_dict(trainer.unet))
    lora = next((tmp_path / "lora").glob("*.safetensors"))
    pipe = diffusers.DiffusionPipeline.from_pretrained(pipeline)
    kw = dict(resolution=16, timesteps=[300, 700], progress=False)
    with_lora = check_captions(pipe, folder, lora=lora, **kw)
    again = check_captions(pipe, folder, **kw)                           # the same pipeline object, after the LoRA was unloaded
    assert np.allclose(with_lora.score, again.score, equal_nan=True)
    assert not np.allclose(with_lora.lora["score"], with_lora.score, equal_nan=True)
    assert with_lora.to_dict()["lora"] == str(lora)
    assert not pipe.get_list_adapters()                                   # the check's adapter is gone
    mine = diffusers.DiffusionPipeline.from_pretrained(pipeline)
    mine.load_lora_weights(str(lora), adapter_name="mine")
    check_captions(mine, folder, lora=lora, **kw)
    assert {a for names in mine.get_list_adapters().values() for a in names} == {"mine"}   # the caller's adapter stays


def test_the_report_in_a_browser(cli_run, tmp_path):
    "Headless Chromium: no console or page error, no request leaves the file, every row and thumbnail is there, sorting and filtering work."
    if not CHROMIUM: pytest.skip("Chromium is not installed (`apt-get install chromium`; .ci/run does this)")
    from playwright.sync_api import sync_playwright
    report = cli_run[1] / "report.html"
    errors, requests = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
            page.goto(report.as_uri(), wait_until="load")
            assert page.locator("#items tbody tr").count() == 12
            assert page.evaluate("Array.from(document.querySelectorAll('#items img')).every(i => i.complete && i.naturalWidth > 0)")
            assert page.locator("#items img").count() == 12 and page.locator("#problems tbody tr").count() == 3
            assert "no caption is called suspect" in page.inner_text("body").lower()          # it cannot read, or cannot tell with 12 items
            page.locator("#items th", has_text="item").click()
            keys = page.evaluate("Array.from(document.querySelectorAll('#items tbody tr')).map(r => r.cells[2].innerText)")
            assert keys == sorted(keys)
            page.fill("#search", "at the top")
            rows = page.evaluate("Array.from(document.querySelectorAll('#items tbody tr')).map(r => [r.hidden, r.cells[3].innerText])")
            assert [hidden for hidden, _ in rows] == [" at the top" not in caption for _, caption in rows] and not all(h for h, _ in rows)
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally: browser.close()
    assert not errors and not requests, (errors, requests)
