"""The package's layout shows its architecture: subpackages by area, imports that flow one way (no circle, a
shallow graph), the CLI an entry point only, and data and engines that never import a demo or a view.

The import graph is read from the source with `ast` (every `import` and `from ... import`, in functions too),
so the test sees what a reader sees, whether or not the import runs."""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / 'caption_evaluator'
MAX_LEVELS = 7
AREAS = ('tracking', 'evaluation', 'captions', 'integrations', 'views', 'demos')


def _modules() -> dict[str, Path]:
    "Dotted module name -> file, for every module of the package (the generated index and `__init__` files aside)."
    out = {}
    for p in PKG.rglob('*.py'):
        if p.name in ('_modidx.py', '__init__.py'): continue
        out['.'.join(('caption_evaluator', *p.relative_to(PKG).with_suffix('').parts))] = p
    return out


def _target(mods: dict, here: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    "The package modules an import statement in module `here` reads."
    if isinstance(node, ast.Import): names = [a.name for a in node.names]
    else:
        base = node.module or ''
        if node.level:
            pkg = here.split('.')[:-node.level]
            base = '.'.join(pkg + ([node.module] if node.module else []))
        names = [f'{base}.{a.name}' for a in node.names] + [base]
    out = set()
    for n in names:
        while n and n not in mods and '.' in n: n = n.rsplit('.', 1)[0]
        if n in mods and n != here: out.add(n)
    return sorted(out)


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: {t for node in ast.walk(ast.parse(p.read_text())) if isinstance(node, (ast.Import, ast.ImportFrom))
                for t in _target(mods, m, node)} for m, p in mods.items()}


def _cycle(graph: dict) -> list | None:
    "One import circle as a list of modules, or None (depth-first search with colours)."
    colour, stack = {}, []
    def visit(m):
        colour[m] = 'grey'; stack.append(m)
        for t in sorted(graph[m]):
            if colour.get(t) == 'grey': return stack[stack.index(t):] + [t]
            if t not in colour and (found := visit(t)): return found
        colour[m] = 'black'; stack.pop()
    for m in sorted(graph):
        if m not in colour and (found := visit(m)): return found


def _levels(graph: dict) -> dict[str, int]:
    "Import level of each module: 1 for a module importing no package module, else 1 + its deepest import."
    memo = {}
    def level(m):
        if m not in memo: memo[m] = 1 + max((level(t) for t in graph[m]), default=0)
        return memo[m]
    return {m: level(m) for m in graph}


def test_the_cycle_finder_finds_a_planted_circle():
    graph = {'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': set()}
    assert _cycle(graph) == ['a', 'b', 'c', 'a']
    assert _cycle({'a': {'b'}, 'b': set()}) is None
    assert _levels({'a': {'b'}, 'b': {'c'}, 'c': set()}) == {'a': 3, 'b': 2, 'c': 1}


def test_no_import_circle():
    assert (c := _cycle(_graph())) is None, f"import circle: {' -> '.join(c)}"


def test_import_graph_is_shallow():
    levels = _levels(_graph())
    deepest = max(levels, key=levels.get)
    assert levels[deepest] <= MAX_LEVELS, f"{deepest} sits on import level {levels[deepest]} (at most {MAX_LEVELS})"


def test_areas_are_subpackages():
    for area in AREAS:
        assert (PKG / area / '__init__.py').is_file(), f"caption_evaluator/{area}/ should be a subpackage"
        assert ast.get_docstring(ast.parse((PKG / area / '__init__.py').read_text())), f"{area}/__init__.py needs a docstring"


@pytest.mark.parametrize('area', ['tracking', 'evaluation', 'captions', 'integrations'])
def test_engines_import_no_demo_view_or_cli(area):
    "Data flows one way: engines never import the demos, the views or the CLI that sit above them."
    graph = _graph()
    bad = {m: sorted(t for t in ts if t.startswith(('caption_evaluator.demos', 'caption_evaluator.views', 'caption_evaluator.cli')))
           for m, ts in graph.items() if m.startswith(f'caption_evaluator.{area}.')}
    assert not any(bad.values()), {m: t for m, t in bad.items() if t}


def test_nothing_imports_the_cli():
    importers = sorted(m for m, ts in _graph().items() if 'caption_evaluator.cli' in ts)
    assert not importers, f"the CLI is an entry point only, yet imported by {importers}"


def test_export_cells_are_short():
    "Every exported cell is at most 60 lines (its `#| export` line included): one idea per cell, shown at once."
    import json
    long = [(nb.name, i, n) for nb in sorted((PKG.parent / 'nbs').glob('*.ipynb'))
            for i, c in enumerate(json.loads(nb.read_text())['cells'])
            if c['cell_type'] == 'code' and ''.join(c['source']).startswith('#| export')
            and (n := len(''.join(c['source']).splitlines())) > 60]
    assert not long, "export cells over 60 lines (split them at a function boundary): " + ", ".join(f"{f} cell {i} ({n} lines)" for f, i, n in long)
