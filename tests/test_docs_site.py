"""The docs site builds offline from the notebooks and works in a real browser (issue 5 §4).

`tools/build_docs.py` is run once (into a temporary folder), the site is served from localhost and opened in
headless Chromium (Debian's `chromium`, driven by Playwright with that executable; no browser is downloaded).
Every check is generic over the notebooks that exist in nbs/ and the modules in caption_evaluator/."""
import ast, functools, json, re, shutil, subprocess, sys, threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urljoin, urlparse

import pytest
from nbdev.config import nbpath2html

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / 'nbs'
LIB = ROOT / 'caption_evaluator'
sys.path.insert(0, str(ROOT / 'tools'))
import build_docs  # noqa: E402

CHROMIUM = next((p for p in (shutil.which('chromium'), shutil.which('chromium-browser'), '/usr/bin/chromium')
                 if p and Path(p).exists()), None)
CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
                  '--disable-component-update', '--disable-sync', '--no-first-run']
_NO_CHROMIUM = ("Chromium is not installed, so the docs site was not opened in a browser: install Debian's "
                "chromium (`apt-get install chromium`; .ci/run does this) to run these checks")


@functools.cache
def _notebooks() -> list[Path]:
    """The notebooks nbdev builds docs from (relative to nbs/), skipping `_`/`.` files and folders as nbdev does;
    listed once, before the build, so every check sees the same set."""
    return sorted(p.relative_to(NBS) for p in NBS.rglob('*.ipynb')
                  if not any(part.startswith(('_', '.')) for part in p.relative_to(NBS).parts))


def _page(nb: Path) -> str:
    "The site path of notebook `nb`, the same as on nbdev's Quarto site (`12_tracking.aggregator.ipynb` -> `tracking.aggregator.html`)."
    return nbpath2html(nb).as_posix()


def _default_exp(nb: Path) -> str | None:
    cells = json.loads((NBS / nb).read_text())['cells']
    srcs = (''.join(c['source']) for c in cells if c['cell_type'] == 'code')
    return next((m[1] for s in srcs if (m := re.search(r'^#\|\s*default_exp\s+(\S+)', s, re.M))), None)


def _public_names(module_file: Path) -> list[str]:
    "A module's `__all__`, read from its source without importing it."
    for node in ast.parse(module_file.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, 'id', None) == '__all__' for t in node.targets):
            return [n for n in ast.literal_eval(node.value) if not n.startswith('_')]
    return []


# ------------------------------------------------------------------------------------------------ build
@pytest.fixture(scope='module')
def build(tmp_path_factory) -> tuple[Path, str]:
    "The site, built by the same command `make docs` runs, into a temporary folder; and the build's output."
    out = tmp_path_factory.mktemp('site')
    _notebooks()
    r = subprocess.run([sys.executable, str(ROOT / 'tools' / 'build_docs.py'), '--out', str(out), '--quiet'],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"tools/build_docs.py failed:\n{r.stdout[-5000:]}\n{r.stderr[-5000:]}"
    assert str(out / 'index.html') in r.stdout, f"the build should print the site's path:\n{r.stdout}"
    return out, r.stdout + r.stderr


@pytest.fixture(scope='module')
def site(build) -> Path: return build[0]


def test_build_has_no_sphinx_warnings(build):
    "Sphinx renders every notebook without a warning (broken references, bad Markdown, unconvertible math)."
    warnings = [l for l in build[1].splitlines() if re.search(r'\bWARNING\b|\bERROR\b', l)]
    assert not warnings, "Sphinx warnings:\n" + '\n'.join(warnings)


def test_every_notebook_has_a_page(site):
    "Each notebook (tutorials included) becomes a page at nbdev's path; the home page is index.ipynb."
    nbs = _notebooks()
    assert Path('index.ipynb') in nbs
    missing = [str(nb) for nb in nbs if not (site / _page(nb)).exists()]
    assert not missing, f"notebooks without a page in the site: {missing}"


# ------------------------------------------------------------------------------------------------ browser
class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args): pass


@pytest.fixture(scope='module')
def server(site):
    "The built site served over HTTP on a free localhost port, in a thread."
    httpd = ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(_QuietHandler, directory=str(site)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f'http://127.0.0.1:{httpd.server_port}/'
    httpd.shutdown(); httpd.server_close(); thread.join(10)


_IMAGES_JS = "Array.from(document.images).map(i => ({src: i.currentSrc || i.src, width: i.naturalWidth, " \
             "figure: !!i.closest('.cell_output')}))"
_NAV_JS = "Array.from(document.querySelectorAll('.sidebar-tree a.reference')).map(a => a.href)"
_WIDE_CODE_JS = "Array.from(document.querySelectorAll('article pre')).filter(p => p.scrollWidth > p.clientWidth + 1)" \
                ".map(p => p.innerText.split('\\n')[0].slice(0, 60))"
_FOOTER_JS = "(document.querySelector('.footer .copyright, footer .copyright') || {innerText: ''}).innerText"


@pytest.fixture(scope='module')
def visits(server, tmp_path_factory) -> dict:
    """Open the home page and every notebook page in headless Chromium; per page: console errors, page errors,
    failed or off-site requests, the main text, the images and the navigation links."""
    if not CHROMIUM: pytest.skip(_NO_CHROMIUM)
    try: from playwright.sync_api import sync_playwright
    except ImportError as e:
        raise ImportError("the docs browser test drives Chromium with Playwright: `pip install -e '.[dev]'`") from e
    profile = tmp_path_factory.mktemp('chromium-profile')   # Playwright passes it as --user-data-dir
    res = {}
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, headless=True,
                                                   args=[f for f in CHROMIUM_FLAGS if f != '--headless'])
        try:
            for nb in _notebooks():
                url = urljoin(server, _page(nb))
                v = {'console': [], 'errors': [], 'failed': [], 'offsite': []}
                page = ctx.new_page()
                page.on('console', lambda m, v=v: v['console'].append(f'{m.text} ({m.location})') if m.type == 'error' else None)
                page.on('pageerror', lambda e, v=v: v['errors'].append(str(e)))
                page.on('requestfailed', lambda r, v=v: v['failed'].append(f'{r.url}: {r.failure}'))
                page.on('request', lambda r, v=v: v['offsite'].append(r.url)
                        if urlparse(r.url).scheme in ('http', 'https') and not r.url.startswith(server) else None)
                resp = page.goto(url, wait_until='load', timeout=60_000)
                v['status'] = resp.status if resp else None
                page.wait_for_function('Array.from(document.images).every(i => i.complete)', timeout=30_000)
                v['title'] = page.title()
                v['text'] = page.inner_text('article[role=main]')
                v['images'] = page.evaluate(_IMAGES_JS)
                v['nav'] = page.evaluate(_NAV_JS)
                v['wide_code'] = page.evaluate(_WIDE_CODE_JS)
                v['footer'] = page.evaluate(_FOOTER_JS)
                res[nb] = v
                page.close()
        finally: ctx.close()
    return res


def test_pages_load_without_errors(visits):
    "The home page and every notebook page load with status 200 and no console errors, page errors or failed requests."
    bad = {str(nb): {k: v[k] for k in ('status', 'console', 'errors', 'failed') if v[k] and v[k] != 200}
           for nb, v in visits.items()}
    bad = {nb: probs for nb, probs in bad.items() if probs}
    assert not bad, f"pages with errors: {json.dumps(bad, indent=1)}"


def test_site_works_offline(visits):
    "No page asks for anything outside the site (no CDN fonts, scripts or MathJax)."
    off = {str(nb): v['offsite'] for nb, v in visits.items() if v['offsite']}
    assert not off, f"pages that request off-site resources: {off}"


def test_home_page_is_index(visits):
    home = visits[Path('index.ipynb')]
    assert home['title'].startswith('caption_evaluator'), home['title']
    assert 'make demo' in home['text'] and 'make test' in home['text']


def test_navigation_lists_every_page(visits, server):
    "The home page's navigation links to every other notebook's page."
    linked = {urlparse(h).path.lstrip('/') for h in visits[Path('index.ipynb')]['nav']}
    missing = [_page(nb) for nb in _notebooks() if nb != Path('index.ipynb') and _page(nb) not in linked]
    assert not missing, f"pages missing from the navigation: {missing} (linked: {sorted(linked)})"


def test_every_public_name_is_documented(visits):
    "Each name in every module's `__all__` appears on the page of the notebook that exports that module."
    pages_of = {}
    for nb in _notebooks():
        if mod := _default_exp(nb): pages_of.setdefault(mod, []).append(nb)
    all_text = '\n'.join(v['text'] for v in visits.values())
    missing, checked = {}, 0
    for f in sorted(LIB.glob('*.py')):
        if f.name.startswith('_'): continue
        text = '\n'.join(visits[nb]['text'] for nb in pages_of.get(f.stem, [])) or all_text
        for name in _public_names(f):
            checked += 1
            if not re.search(rf'(?<![\w]){re.escape(name)}(?!\w)', text):
                missing.setdefault(f.stem, []).append(name)
    assert checked, "no public names found in caption_evaluator/*.py"
    assert not missing, f"exported names that do not appear on their module's page: {missing}"


def test_code_stays_in_the_column(visits):
    "No code block on any page scrolls sideways (at the browser's default window width)."
    wide = {str(nb): v['wide_code'] for nb, v in visits.items() if v['wide_code']}
    assert not wide, f"code blocks wider than the column: {wide}"


def test_footer_names_the_copyright_holder(visits):
    footer = visits[Path('index.ipynb')]['footer']
    assert re.search(r'©\s*\d{4},?\s*\w', footer), f"footer: {footer!r}"


def test_figures_load(visits):
    "Every image on every page loads (natural width > 0), and the site shows at least one figure from a notebook."
    broken = {str(nb): [i['src'] for i in v['images'] if i['width'] <= 0] for nb, v in visits.items()}
    broken = {nb: srcs for nb, srcs in broken.items() if srcs}
    assert not broken, f"images that did not load: {broken}"
    figures = [i for v in visits.values() for i in v['images'] if i['figure'] and i['width'] > 0]
    assert figures, "no notebook figure (a cell output image) found on any page"


# ------------------------------------------------------------------------------------------------ no browser
def test_quarto_files_current(tmp_path):
    """nbdev's Quarto path stays valid: nbs/_quarto.yml, nbs/nbdev.yml and nbs/styles.css exist, and nbdev's
    own `refresh_quarto_yml` (run by `nbdev-docs`) leaves them unchanged."""
    files = ('_quarto.yml', 'nbdev.yml', 'styles.css')
    for f in files: assert (NBS / f).exists(), f"nbs/{f} is missing; `nbdev-docs` needs it"
    proj = tmp_path / 'proj'
    (proj / 'nbs').mkdir(parents=True)
    shutil.copy(ROOT / 'pyproject.toml', proj)
    for f in files: shutil.copy(NBS / f, proj / 'nbs' / f)
    subprocess.run([sys.executable, '-c', 'from nbdev.quarto import refresh_quarto_yml; refresh_quarto_yml()'],
                   cwd=proj, check=True, timeout=120)
    for f in files:
        assert (proj / 'nbs' / f).read_text() == (NBS / f).read_text(), \
            f"nbs/{f} is stale: run `python -c 'from nbdev.quarto import refresh_quarto_yml; refresh_quarto_yml()'`"
    quarto = (NBS / '_quarto.yml').read_text()
    assert 'styles.css' in quarto and 'nbdev.yml' in quarto


def test_quarto_markdown_translation():
    "Callouts become MyST admonitions, other Pandoc divs are unwrapped, link attributes dropped, code left alone."
    md = ("::: {.callout-warning}\nCareful.\n:::\n\n::: {.py-2 .border}\nBoxed.\n:::\n\n"
          "[source](https://x.org/a.py#L3){target=\"_blank\" style=\"float:right\"}\n\n```\n::: {.callout-note}\n```")
    out = build_docs.quarto_md_to_myst(md)
    assert out.startswith(':::{warning}\nCareful.\n:::')
    assert 'Boxed.' in out and '.py-2' not in out
    assert '[source](https://x.org/a.py#L3)\n' in out and 'target=' not in out
    assert out.endswith('```\n::: {.callout-note}\n```')


def test_links_point_into_the_site():
    "nbdev's links to the hosted docs point at this site's pages, or lose the link when the page is not built."
    doc = 'https://example.github.io/lib'
    md = f"See [`Agg.update`]({doc}/aggregator.html#agg.update) and [`f`]({doc}/missing.html#f)."
    out = build_docs.local_links(md, doc, {'index', 'aggregator'}, depth=1)
    assert 'href="../aggregator.html#agg-update"' in out and '<code' in out
    assert out.endswith('and `f`.')
