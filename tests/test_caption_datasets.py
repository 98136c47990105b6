"""The dataset readers against hand-made folders: every hostile file named with its reason, every good item still
read, nothing outside the root opened; the caption rule against ai-toolkit's own `get_caption`; a real
`datasets.Dataset`. Expected keys and captions are written by hand here."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from caption_evaluator.captions.datasets import from_rows, read_caption_dataset, read_caption_folder, read_imagefolder, trained_caption

ROOT = Path(__file__).resolve().parents[1]
AITK, AITK_PYTHON = ROOT.parent / "shared" / "vendor" / "ai-toolkit", ROOT / ".aitk-venv" / "bin" / "python"


def picture(path: Path, size=(24, 24), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(len(str(path))).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path)


@pytest.fixture
def hostile(tmp_path):
    "A kohya/ai-toolkit folder with three good items and one file of each hostile kind; plus a file outside the root."
    root, outside = tmp_path / "data", tmp_path / "outside"
    picture(outside / "secret.png"); (outside / "secret.txt").write_text("outside")
    picture(root / "good1.png"); (root / "good1.txt").write_text("a red disc")
    picture(root / "sub" / "good2.jpg"); (root / "sub" / "good2.txt").write_text("a blue square, small")
    picture(root / "good3.webp"); (root / "good3.txt").write_text("[trigger] by a tree")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage"); (root / "corrupt.txt").write_text("x")
    full = (root / "good1.png").read_bytes()
    (root / "truncated.png").write_bytes(full[: len(full) // 2]); (root / "truncated.txt").write_text("x")
    picture(root / "latin1.png"); (root / "latin1.txt").write_bytes("un caf\xe9".encode("latin-1"))
    picture(root / "empty.png"); (root / "empty.txt").write_text("  \n")
    (root / "escape.png").symlink_to(outside / "secret.png"); (root / "escape.txt").write_text("a link")
    picture(root / "capesc.png"); (root / "capesc.txt").symlink_to(outside / "secret.txt")
    Image.new("1", (20000, 20000)).save(root / "bomb.png"); (root / "bomb.txt").write_text("a bomb")
    Image.new("I;16", (16, 16)).save(root / "deep.png"); (root / "deep.txt").write_text("16 bits")
    picture(root / "twice.png"); picture(root / "twice.jpg"); (root / "twice.txt").write_text("a green disc")
    picture(root / "nocap.png")
    picture(root / ".hidden" / "h.png"); (root / ".hidden" / "h.txt").write_text("hidden")
    picture(root / "_controls" / "c.png"); (root / "_controls" / "c.txt").write_text("control")
    (root / "outlink").symlink_to(outside, target_is_directory=True)
    return root


SKIPPED = {"corrupt.png": "unreadable", "truncated.png": "unreadable", "latin1.txt": "not UTF-8", "empty.txt": "empty caption",
           "escape.png": "outside the dataset root", "capesc.txt": "outside the dataset root", "bomb.png": "pixels",
           "deep.png": "mode I", "nocap.png": "no caption file", "outlink": "linked folder"}


def test_every_hostile_file_is_named_and_every_good_item_read(hostile):
    ds = read_caption_folder(hostile, trigger="sks")
    assert ds.keys == ["good1.png", "good3.webp", "sub/good2.jpg", "twice.jpg", "twice.png"]
    assert ds.captions == ["sks a red disc", "sks by a tree", "sks a blue square,  small", "sks a green disc", "sks a green disc"]
    assert ds.raw_captions[1] == "[trigger] by a tree"
    skipped = {p.file: p for p in ds.problems if p.skipped}
    assert sorted(skipped) == sorted(SKIPPED)
    for file, words in SKIPPED.items(): assert words in skipped[file].reason and skipped[file].fix, (file, skipped[file])
    assert sorted(p.file for p in ds.problems if not p.skipped) == ["twice.jpg", "twice.png"]
    assert all(ds.image(i).mode == "RGB" for i in range(len(ds)))
    assert len(ds.format_problems().splitlines()) == 1 + len(ds.problems)


def test_nothing_outside_the_root_is_opened(hostile):
    "An audit hook sees every `open`: none of them leaves the dataset root (the library's own files aside)."
    opened, on = [], [True]
    def hook(event, args):
        if on[0] and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)): opened.append(os.fsdecode(args[0]))
    sys.addaudithook(hook)
    try:
        ds = read_caption_folder(hostile)
        for i in range(len(ds)): ds.image(i)
    finally: on[0] = False
    outside = hostile.parent / "outside"
    assert opened and not [p for p in opened if Path(p).resolve().is_relative_to(outside.resolve())]


def test_a_default_caption_and_kohya_caption_files(tmp_path):
    picture(tmp_path / "a.png"); (tmp_path / "a.caption").write_text("a red disc")
    picture(tmp_path / "b.png")
    picture(tmp_path / "sub" / "c.png"); (tmp_path / "sub" / "default.txt").write_text("a folder's caption")
    ds = read_caption_folder(tmp_path, caption_ext="caption", default_caption="a default")
    assert (ds.keys, ds.captions) == (["a.png", "b.png", "sub/c.png"], ["a red disc", "a default", "a folder's caption"])


def test_imagefolder_metadata_rows(tmp_path):
    for name in ("0.png", "1.png", "2.png", "3.png"): picture(tmp_path / "train" / name)
    rows = [{"file_name": "0.png", "text": "a red disc"}, {"file_name": "../../x.png", "text": "escape"}, {"file_name": "1.png"},
            {"file_name": "0.png", "text": "again"}, {"file_name": "9.png", "text": "missing"}, {"file_name": "2.png", "text": "a blue square"}]
    (tmp_path / "train" / "metadata.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n{broken\n")
    ds = read_caption_dataset(tmp_path)                                             # found by its metadata.jsonl
    assert (ds.keys, ds.captions) == (["train/0.png", "train/2.png"], ["a red disc", "a blue square"])
    assert sorted(p.file for p in ds.problems) == sorted(["train/metadata.jsonl:2", "train/metadata.jsonl:3", "train/metadata.jsonl:4",
                                                          "train/metadata.jsonl:5", "train/metadata.jsonl:7", "train/3.png"])


def test_a_metadata_file_with_a_byte_order_mark(tmp_path):
    picture(tmp_path / "a.png")
    (tmp_path / "metadata.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps({"file_name": "a.png", "text": "a red disc"}).encode() + b"\n")
    ds = read_imagefolder(tmp_path)
    assert (ds.keys, ds.captions, ds.problems) == (["a.png"], ["a red disc"], [])


def test_imagefolder_csv_and_caption_column(tmp_path):
    picture(tmp_path / "a.png"); picture(tmp_path / "b.png")
    (tmp_path / "metadata.csv").write_text("file_name,prompt\na.png,a red disc\nb.png,\n")
    ds = read_imagefolder(tmp_path, caption_column="prompt")
    assert (ds.keys, ds.captions, [p.file for p in ds.problems]) == (["a.png"], ["a red disc"], ["metadata.csv:3"])


def test_a_real_datasets_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    picture(tmp_path / "a.png"); picture(tmp_path / "b.png")
    ds = datasets.Dataset.from_dict({"image": [str(tmp_path / "a.png"), str(tmp_path / "b.png")], "text": ["a red disc", ""],
                                     "name": ["first", "second"]}).cast_column("image", datasets.Image())
    got = from_rows(ds, key_column="name")
    assert (got.keys, got.captions, [p.file for p in got.problems]) == (["first"], ["a red disc"], ["row second"])
    assert np.array_equal(np.asarray(got.image(0)), np.asarray(Image.open(tmp_path / "a.png").convert("RGB")))
    raw = from_rows(ds.cast_column("image", datasets.Image(decode=False)))            # undecoded {"bytes", "path"} rows
    assert raw.keys == ["0"] and np.array_equal(np.asarray(raw.image(0)), np.asarray(got.image(0)))


CASES = ["a dog", "[trigger] in a hat", "a photo of [name], grass", "sks dog", "a,b,, c", " lead space", "trail\n",
         "tags, red,blue ,green", "", "[trigger][trigger]", "A Dog, [NAME]", "sksy dog", "dog sks"]


@pytest.mark.skipif(not (AITK_PYTHON.exists() and AITK.is_dir()), reason="ai-toolkit's environment is not built (make aitk)")
def test_the_trained_caption_is_ai_toolkits():
    "ai-toolkit's own `get_caption` (no dropout, no shuffling) on each caption, with and without a trigger word."
    script = """
import json, sys
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2])
import aitk_cpu_shims
from types import SimpleNamespace
from toolkit.dataloader_mixins import CaptionProcessingDTOMixin
config = SimpleNamespace(caption_dropout_rate=0.0, token_dropout_rate=0.0, shuffle_tokens=False, cache_text_embeddings=False, random_triggers=[], keep_tokens=0)
out = []
for raw, trigger in json.loads(sys.stdin.read()):
    item = SimpleNamespace(trigger_word=trigger, is_reg=False, raw_caption=raw, raw_caption_short=None, dataset_config=config)
    out.append(CaptionProcessingDTOMixin.get_caption(item))
print(json.dumps(out))
"""
    cases = [(c, t) for c in CASES for t in (None, "sks")]
    p = subprocess.run([str(AITK_PYTHON), "-c", script, str(AITK), str(AITK.parent.parent / "aitk-harness")], input=json.dumps(cases),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    theirs = json.loads(p.stdout.strip().splitlines()[-1])
    assert [trained_caption(c, t) for c, t in cases] == [s.strip() for s in theirs]


def test_links_that_lead_nowhere_pipes_folders_and_odd_names_are_named(tmp_path):
    "A link loop, a pipe named like an image, a folder where a caption file should be, a name that is not UTF-8: each a problem, nothing hangs."
    picture(tmp_path / "good.png"); (tmp_path / "good.txt").write_text("a red disc")
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    os.mkfifo(tmp_path / "pipe.png"); (tmp_path / "pipe.txt").write_text("a pipe")
    picture(tmp_path / "dircap.png"); (tmp_path / "dircap.txt").mkdir()
    picture(tmp_path / os.fsdecode(b"odd\xff.png")); (tmp_path / os.fsdecode(b"odd\xff.txt")).write_text("odd")
    ds = read_caption_folder(tmp_path)
    assert ds.keys == ["good.png"]
    reasons = {p.file: p.reason for p in ds.problems}
    assert sorted(reasons) == ["dircap.txt", "loop.png", "odd\\xff.png", "pipe.png"], reasons
    assert "loop" in reasons["loop.png"] and "regular file" in reasons["pipe.png"] and "UTF-8" in reasons["odd\\xff.png"]


def test_a_bad_metadata_file_is_one_problem_and_the_others_are_read(tmp_path):
    picture(tmp_path / "a" / "0.png"); picture(tmp_path / "b" / "0.png")
    (tmp_path / "a" / "metadata.jsonl").write_bytes(b'{"file_name": "0.png", "text": "a red disc"}\n' + b"[" * 100000 + b"\n"
                                                     + b'{"file_name": "0.png", "text": "caf\xe9"}\n')
    (tmp_path / "b" / "metadata.csv").mkdir()                                      # a folder where the table should be
    ds = read_imagefolder(tmp_path)
    assert (ds.keys, ds.captions) == (["a/0.png"], ["a red disc"])
    assert sorted(p.file for p in ds.problems) == ["a/metadata.jsonl:2", "a/metadata.jsonl:3", "b/0.png", "b/metadata.csv"]


def test_rows_with_one_key_twice(tmp_path):
    rows = [{"image": Image.new("RGB", (8, 8)), "text": "a cat", "name": "x"}, {"image": Image.new("RGB", (8, 8)), "text": "a dog", "name": "x"}]
    got = from_rows(rows, key_column="name")
    assert (got.keys, [p.file for p in got.problems]) == (["x"], ["row x"])
