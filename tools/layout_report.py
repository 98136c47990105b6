#!/usr/bin/env python
"""Figures of the package layout: `python tools/layout_report.py [REPO]`.

Prints the import graph (modules, edges, levels, circles), the largest modules, the sizes of the notebooks' export
cells (median, count over 60 lines, largest) and the private helpers that take more than 8 parameters, the
limits the house rules set (tests/test_layout.py enforces those that hold)."""
import ast, json, statistics, sys
from pathlib import Path
ROOT = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]); PKG = ROOT / 'caption_evaluator'
mods = {}
for p in PKG.rglob('*.py'):
    if p.name == '_modidx.py': continue
    parts = p.relative_to(ROOT).with_suffix('').parts
    name = '.'.join(parts[:-1] if parts[-1] == '__init__' else parts); mods[name] = p
def resolve(cur, node):
    if node.level == 0: return node.module
    base = cur.split('.'); pkg = base if mods[cur].name == '__init__.py' else base[:-1]
    pkg = pkg[:len(pkg) - (node.level - 1)]
    return '.'.join(pkg + ([node.module] if node.module else []))
edges = {m: set() for m in mods}
for m, p in mods.items():
    if m == 'caption_evaluator': continue   # the root's lazy names
    for node in ast.walk(ast.parse(p.read_text())):
        targets = []
        if isinstance(node, ast.ImportFrom):
            t = resolve(m, node)
            if t and t.startswith('caption_evaluator'):
                targets = [f'{t}.{a.name}' if f'{t}.{a.name}' in mods else t for a in node.names]
        elif isinstance(node, ast.Import): targets = [a.name for a in node.names if a.name.startswith('caption_evaluator')]
        for t in targets:
            while t not in mods and '.' in t: t = t.rsplit('.', 1)[0]
            if t in mods and t != m and not t in ('caption_evaluator',) and mods[t].name != '__init__.py': edges[m].add(t)
files = [m for m in mods if mods[m].name != '__init__.py']
level, state, cycles = {}, {}, []
def lv(m, stack=()):
    if m in stack: cycles.append(stack[stack.index(m):] + (m,)); return 0
    if m not in level: level[m] = 1 + max((lv(t, stack + (m,)) for t in edges[m]), default=0)
    return level[m]
for m in files: lv(m)
print(f"files {len(files)}, edges {sum(len(edges[m]) for m in files)}, levels {max(level.values())}, cycles {len(cycles)}")
for c in cycles[:5]: print('  cycle', ' -> '.join(c))
sizes = sorted(((len(mods[m].read_text().splitlines()), m) for m in files), reverse=True)
print('largest modules', sizes[:5])
cells = []
for nb in sorted((ROOT / 'nbs').glob('*.ipynb')):
    for c in json.loads(nb.read_text())['cells']:
        s = ''.join(c['source'])
        if c['cell_type'] == 'code' and s.startswith('#| export'): cells.append((len(s.splitlines()) - 1, nb.stem))
n = sorted(x for x, _ in cells)
print(f"export cells {len(n)}, median {statistics.median(n)}, over 60: {sum(x > 60 for x in n)}, largest {sorted(cells, reverse=True)[:6]}")
many = []
for m in files:
    for node in ast.walk(ast.parse(mods[m].read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith('_') and not node.name.startswith('__'):
            a = node.args; k = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + bool(a.vararg) + bool(a.kwarg)
            if a.args and a.args[0].arg in ('self', 'cls'): k -= 1
            if k > 8: many.append((k, f'{m}.{node.name}'))
print('private helpers over 8 parameters:', len(many), sorted(many, reverse=True))
