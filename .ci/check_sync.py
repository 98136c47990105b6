"""Fail when `nbdev-clean` would change a notebook or `nbdev-export` would change the library.

Hashes every notebook and library file, runs the two commands, and compares, so it works the same
in a fresh clone and in a working tree with uncommitted edits."""
import hashlib, subprocess, sys
from pathlib import Path

def _hashes(*dirs):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest()
            for d in dirs for p in sorted(Path(d).rglob('*')) if p.is_file() and '__pycache__' not in p.parts}

def _changed(cmd, *dirs):
    before = _hashes(*dirs)
    subprocess.run(cmd, check=True)
    after = _hashes(*dirs)
    return sorted(str(p) for p in before.keys() | after.keys() if before.get(p) != after.get(p))

failed = False
for cmd, dirs, fix in [(['nbdev-clean'], ['nbs'], 'run nbdev-clean and commit the notebooks'),
                       (['nbdev-export'], ['caption_evaluator'], 'run nbdev-export and commit the library')]:
    changed = _changed([str(Path(sys.executable).parent/cmd[0])], *dirs)
    if changed:
        failed = True
        print(f"{cmd[0]} changed {len(changed)} file(s) ({fix}):", *changed, sep='\n  ')
if failed: sys.exit(1)
print("notebooks clean, library in sync with notebooks")
