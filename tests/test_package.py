"""The package as a new user meets it (issue 2 §1): the wheel installs and imports outside the repository,
README.md is generated from nbs/index.ipynb and gives the two commands, CI runs the README's test command,
and the project is an nbdev 3 project (settings in pyproject.toml only)."""
import ast, importlib, json, os, re, shutil, subprocess, sys, sysconfig, tomllib, zipfile
from pathlib import Path

import pytest
from helpers import fenced_blocks

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tools'))
from sync_readme import render_readme  # noqa: E402

_IGNORE = shutil.ignore_patterns('.git', '.venv', 'build', 'dist', '*.egg-info', '__pycache__', '_proc', '_site',
                                 '_docs', '.pytest_cache', 'demo_output', 'evaluation_results', 'wandb', 'runs')


def _repo_version() -> str:
    "`__version__` as written in caption_evaluator/__init__.py, read without importing the package."
    tree = ast.parse((ROOT / 'caption_evaluator' / '__init__.py').read_text())
    return next(n.value.value for n in tree.body if isinstance(n, ast.Assign)
                and any(getattr(t, 'id', None) == '__version__' for t in n.targets))


def _clean_env() -> dict:
    "The environment without anything that would let Python find the repository's copy of the package."
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'PYTHONHOME', 'VIRTUAL_ENV')}
    env['PIP_DISABLE_PIP_VERSION_CHECK'] = '1'
    return env


def _build_backend_installed() -> bool:
    "Whether this environment already satisfies `[build-system] requires`, so the wheel builds offline."
    from importlib.metadata import PackageNotFoundError, version
    from packaging.requirements import Requirement
    reqs = tomllib.loads((ROOT / 'pyproject.toml').read_text())['build-system']['requires']
    try: return all(Requirement(r).specifier.contains(version(Requirement(r).name), prereleases=True) for r in reqs)
    except PackageNotFoundError: return False


@pytest.fixture(scope='module')
def wheel(tmp_path_factory) -> Path:
    """`pip wheel` of a copy of the project (so stale `build/` files in the working tree cannot leak into it).
    Offline (no build isolation) when this environment has the build backend, as the dev install does."""
    tmp = tmp_path_factory.mktemp('wheel')
    src = tmp / 'src'
    shutil.copytree(ROOT, src, ignore=_IGNORE)
    offline = ['--no-build-isolation', '--no-index'] if _build_backend_installed() else []
    r = subprocess.run([sys.executable, '-m', 'pip', 'wheel', str(src), '--no-deps', *offline, '-q',
                        '-w', str(tmp / 'dist')], capture_output=True, text=True, env=_clean_env(), timeout=300)
    assert r.returncode == 0, f"pip wheel failed:\n{r.stdout}\n{r.stderr}"
    wheels = list((tmp / 'dist').glob('caption_evaluator-*.whl'))
    assert len(wheels) == 1, f"expected one caption_evaluator wheel, got {wheels}"
    return wheels[0]


@pytest.fixture(scope='module')
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv with only the wheel installed in it. Its dependencies (torch, ...) are found through a
    `.pth` line pointing at this environment's site-packages, so nothing is downloaded; `.pth` files there
    (such as an editable install of the repository) are not run, so the repository stays invisible."""
    venv = tmp_path_factory.mktemp('venv') / 'env'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True, timeout=120)
    py = venv / 'bin' / 'python'
    r = subprocess.run([sys.executable, '-m', 'pip', '--python', str(py), 'install', '--no-deps', '--no-index', '-q',
                        str(wheel)], capture_output=True, text=True, env=_clean_env(), timeout=300)
    assert r.returncode == 0, f"installing the wheel failed:\n{r.stdout}\n{r.stderr}"
    purelib = subprocess.run([str(py), '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                             capture_output=True, text=True, check=True).stdout.strip()
    deps = sysconfig.get_paths()['purelib']
    (Path(purelib) / '_outer_deps.pth').write_text(deps + '\n')
    return venv


def test_wheel_contents(wheel):
    "The wheel holds every library module, metadata with the console script and a lower-bound torch."
    names = zipfile.ZipFile(wheel).namelist()
    modules = sorted(p.name for p in (ROOT / 'caption_evaluator').glob('*.py'))
    missing = [m for m in modules if f'caption_evaluator/{m}' not in names]
    assert not missing, f"modules missing from the wheel: {missing}"
    assert not [n for n in names if n.startswith(('nbs/', 'tests/', 'tools/', 'bench/'))], names
    meta = next(zipfile.ZipFile(wheel).read(n).decode() for n in names if n.endswith('.dist-info/METADATA'))
    assert f'Version: {_repo_version()}' in meta
    torch_req = next(l for l in meta.splitlines() if l.startswith('Requires-Dist: torch'))
    assert '==' not in torch_req, f"the library must ask for a lower bound on torch, not a pin: {torch_req}"
    ep = next(zipfile.ZipFile(wheel).read(n).decode() for n in names if n.endswith('.dist-info/entry_points.txt'))
    assert re.search(r'^caption-eval\s*=\s*caption_evaluator\.cli:main', ep, re.M), ep


def test_wheel_imports_outside_repo(venv, tmp_path):
    "Imported from a directory outside the repository, the package comes from the venv and has the repo's version."
    py = venv / 'bin' / 'python'
    code = "import caption_evaluator as c, json; print(json.dumps([c.__version__, c.__file__]))"
    r = subprocess.run([str(py), '-c', code], cwd=tmp_path, capture_output=True, text=True, env=_clean_env(), timeout=300)
    assert r.returncode == 0, r.stderr
    version, file = json.loads(r.stdout.strip().splitlines()[-1])
    assert version == _repo_version()
    assert Path(file).resolve().is_relative_to(venv.resolve()), f"imported from {file}, not from the venv {venv}"
    assert not Path(file).resolve().is_relative_to(ROOT), f"imported the repository's copy: {file}"


def test_wheel_submodules_import(venv, tmp_path):
    "Every module in the wheel imports in the fresh venv (no module depends on files left in the repository)."
    py = venv / 'bin' / 'python'
    mods = sorted(p.stem for p in (ROOT / 'caption_evaluator').glob('*.py') if not p.stem.startswith('__'))
    code = f"import importlib\nfor m in {mods!r}: importlib.import_module('caption_evaluator.' + m)\nprint('ok')"
    r = subprocess.run([str(py), '-c', code], cwd=tmp_path, capture_output=True, text=True, env=_clean_env(), timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith('ok'), r.stderr


def test_the_wheel_ships_the_base_pipeline(venv, tmp_path):
    "The shipped pipeline is inside the installed package, loads with diffusers' `from_pretrained` there, and its weights are the logged ones."
    pytest.importorskip("diffusers")
    py = venv / 'bin' / 'python'
    code = ("import hashlib, json\nfrom diffusers import DiffusionPipeline\n"
            "from caption_evaluator.demos.base_pipeline import BASE_PIPELINE, base_training_log\n"
            "pipe = DiffusionPipeline.from_pretrained(BASE_PIPELINE)\n"
            "same = all(hashlib.sha256((BASE_PIPELINE / f).read_bytes()).hexdigest() == h for f, h in base_training_log()['sha256'].items())\n"
            "print(json.dumps([str(BASE_PIPELINE), type(pipe).__name__, same]))")
    r = subprocess.run([str(py), '-c', code], cwd=tmp_path, capture_output=True, text=True, env=_clean_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    folder, cls, same = json.loads(r.stdout.strip().splitlines()[-1])
    assert Path(folder).resolve().is_relative_to(venv.resolve()) and cls == 'FluxPipeline' and same, (folder, cls, same)


def test_console_script_from_wheel(venv, tmp_path):
    "The `caption-eval` entry point installed by the wheel runs."
    exe = venv / 'bin' / 'caption-eval'
    assert exe.exists(), f"the wheel installed no caption-eval script into {exe.parent}"
    r = subprocess.run([str(exe), '--help'], cwd=tmp_path, capture_output=True, text=True, env=_clean_env(), timeout=300)
    assert r.returncode == 0, r.stderr
    assert 'usage' in r.stdout.lower() and 'demo' in r.stdout, r.stdout


# ------------------------------------------------------------------------------------ README and index
def _index_markdown() -> str:
    nb = json.loads((ROOT / 'nbs' / 'index.ipynb').read_text())
    return '\n\n'.join(''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'markdown')


def test_readme_is_generated_from_index():
    "README.md is exactly what tools/sync_readme.py makes from nbs/index.ipynb."
    expected = render_readme(ROOT / 'nbs' / 'index.ipynb')
    assert (ROOT / 'README.md').read_text() == expected, \
        "README.md is out of date with nbs/index.ipynb: run `python tools/sync_readme.py` and commit README.md"


def test_readme_commands_match_index():
    "The shell blocks are the same in README.md and nbs/index.ipynb; its make commands are the Makefile's demo, lab and test."
    readme, index = fenced_blocks((ROOT / 'README.md').read_text(), 'sh'), fenced_blocks(_index_markdown(), 'sh')
    assert readme == index
    make = [c for c in readme if c.startswith('make')]
    assert make == ['make demo', 'make lab', 'make test'], f"the README's make commands: {make}"
    targets = re.findall(r'^([a-z]+):', (ROOT / 'Makefile').read_text(), re.M)
    assert {'demo', 'lab', 'test'} <= set(targets), targets


def test_ci_runs_readme_test_command():
    "`.ci/run` runs `make test`, the test command the README gives."
    ci = (ROOT / '.ci' / 'run').read_text()
    commands = [l.split('#')[0].strip() for l in ci.splitlines() if l.strip() and not l.lstrip().startswith('#')]
    assert 'make test' in commands, f".ci/run does not run `make test`: {commands}"
    readme = (ROOT / 'README.md').read_text()
    assert 'make test' in fenced_blocks(readme, 'sh')
    assert re.search(r'^test:', (ROOT / 'Makefile').read_text(), re.M), "Makefile has no `test` target"


def test_nbdev3_layout():
    "nbdev 3 keeps its settings in pyproject.toml: no settings.ini or setup.py; torch pinned only for dev/CI."
    for f in ('settings.ini', 'setup.py'):
        assert not (ROOT / f).exists(), f"{f} must not exist in an nbdev 3 project (settings live in pyproject.toml)"
    cfg = tomllib.loads((ROOT / 'pyproject.toml').read_text())
    assert 'nbdev' in cfg.get('tool', {}), "pyproject.toml has no [tool.nbdev] table"
    assert 'caption-eval' in cfg['project']['scripts']
    torch = next(d for d in cfg['project']['dependencies'] if re.match(r'torch\b', d))
    assert '>=' in torch and '==' not in torch, torch
    assert re.search(r'^torch==', (ROOT / 'constraints-dev.txt').read_text(), re.M), "constraints-dev.txt must pin torch"


def test_type_checking_imports_match_the_lazy_names():
    "Editors see every lazily imported root name: the `TYPE_CHECKING` block imports exactly `_ROOT_NAMES`, from the same modules."
    tree = ast.parse((ROOT / 'caption_evaluator' / '__init__.py').read_text())
    roots = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], 'id', '') == '_ROOT_NAMES')
    block = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, 'id', '') == '_TYPE_CHECKING')
    imported = {}
    for imp in block.body: imported.setdefault(imp.module, []).extend(a.name for a in imp.names)   # `from .losses import ...`: module 'losses'
    assert imported == roots
    import caption_evaluator
    for module, names in roots.items():
        for name in names: assert getattr(caption_evaluator, name) is getattr(importlib.import_module(f"caption_evaluator.{module}"), name)
