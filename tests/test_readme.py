"""README.md runs verbatim: its Python blocks, in order, in a fresh interpreter outside the repository, then
every shell block that runs the `caption-eval` CLI on what they wrote (with this environment's programs
on `PATH`, as after `source .venv/bin/activate`)."""
import os
import subprocess
import sys
from pathlib import Path

from helpers import fenced_blocks

ROOT = Path(__file__).resolve().parents[1]


def _blocks(lang: str) -> list[str]:
    return fenced_blocks((ROOT / "README.md").read_text(), lang)


def test_readme_python_blocks_run(tmp_path):
    blocks = _blocks("python")
    assert blocks, "README.md shows no Python"
    script = tmp_path / "readme.py"
    script.write_text("\n".join(blocks))
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    cli = [line for b in _blocks("sh") for line in b.splitlines() if line.startswith("caption-eval ")]
    assert cli, "README.md shows no caption-eval command"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for command in cli:
        r = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"{command!r} failed:\n{r.stdout[-1000:]}\n{r.stderr[-1000:]}"
        expected = "report.html" if command.startswith("caption-eval check") else "img/bad_caption.png"   # what each command must print
        assert expected in r.stdout, r.stdout
