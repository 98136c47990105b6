# Sphinx configuration of the offline docs site (`make docs`, tools/build_docs.py): Sphinx + MyST-NB + Furo,
# rendering the notebooks' stored outputs only. tools/build_docs.py copies it next to the generated sources.
from html import escape
from docutils import nodes
from latex2mathml.converter import convert as latex_to_mathml
from sphinx.util import logging

project = 'caption_evaluator'
author = 'caption_evaluator developers'
copyright = '2026, caption_evaluator developers'   # the footer's holder
html_title = 'caption_evaluator'
extensions = ["myst_nb"]
root_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
nb_execution_mode = "off"                 # never execute: the notebooks are committed with their outputs
nb_render_markdown_format = "myst"        # Markdown outputs (tables, math) parsed like the prose
nb_ipywidgets_js = {}                     # no CDN scripts: widget views show their text fallback
nb_mime_priority_overrides = [("*", "application/vnd.jupyter.widget-view+json", None)]   # never a widget view: its JavaScript is not loaded offline, the HTML/text fallback shows
nb_output_stderr = "show"
myst_enable_extensions = ["colon_fence", "attrs_inline", "attrs_block", "deflist", "strikethrough",
                          "dollarmath", "amsmath"]
myst_dmath_allow_space = False            # Pandoc's rules for $math$ (as Quarto): "$5 and $10" stays text
myst_dmath_allow_digits = False
myst_heading_anchors = 4
suppress_warnings = ["myst.header", "mystnb.unknown_mime_type", "misc.highlighting_failure"]
html_theme = "furo"
html_static_path = ["_static"]
html_css_files = ["styles.css", "site.css"]
html_copy_source = False
html_show_sourcelink = False
html_theme_options = {"top_of_page_buttons": []}
html_favicon = "_static/favicon.svg"      # browsers otherwise ask for /favicon.ico
html_math_renderer = "mathml"             # math as MathML at build time: no MathJax download, works offline

_log = logging.getLogger(__name__)

def _visit_math(self, node, display):
    latex = node.astext()
    try: html = latex_to_mathml(latex, display=display)
    except Exception as e:
        _log.warning(f"math {latex!r} could not be converted to MathML ({e}); it is shown as LaTeX source", location=node)
        html = f'<code class="math-source">{escape(latex)}</code>'
    self.body.append(f'<div class="math-display">{html}</div>' if display == "block" else html)
    raise nodes.SkipNode

def setup(app):
    app.add_html_math_renderer("mathml", (lambda self, node: _visit_math(self, node, "inline"), None),
                               (lambda self, node: _visit_math(self, node, "block"), None))
