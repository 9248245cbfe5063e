"""Sphinx configuration of the book's website (`make site`; tools/site.py stages the sources).

The pages are the stored notebooks, rendered as they are: nothing is re-executed, so
the site shows exactly the outputs that nbval checks. Everything a page loads is local
(MathJax and the widget manager are vendored by tools/site.py into _static/vendor), so
the site reads with no network.
"""

project = "fpnbook"
author = "the fpnbook authors"
copyright = "2026, the fpnbook authors"

extensions = ["myst_nb"]
root_doc = "index"
exclude_patterns = ["_build", "_doctrees", "**.ipynb_checkpoints"]

# Render the stored outputs; never run a kernel.
nb_execution_mode = "off"
# Widget views in the notebooks render from the widget state saved in them, with the
# vendored html-manager's standalone bundle (myst-nb would load its AMD build and
# require.js from CDNs). It has the base, controls and output widgets built in, which
# are all the book uses, and finds its fonts next to its own script.
nb_ipywidgets_js = {"mathjax2_shim.js": {}, "vendor/html-manager/embed.js": {}}
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
# Chapters link to the library's source and to each other by relative paths that only
# mean something in the repository; they are not pages here.
suppress_warnings = ["myst.xref_missing", "myst.header"]

mathjax_path = "vendor/mathjax/tex-chtml.js"

html_theme = "sphinx_book_theme"
html_title = "fpnbook"
html_static_path = ["_static"]
html_css_files = ["fpnbook.css"]
html_theme_options = {
    "repository_url": "",
    "use_download_button": True,
    "show_toc_level": 2,
    "announcement": (
        "You are reading the stored notebooks: every output is the one the tests check. "
        "To run the cells and drag the widgets' sliders, open the book live with "
        "<code>make lab</code> (see the landing page)."
    ),
}
# A fixed light mode: the figures are drawn on white.
html_context = {"default_mode": "light"}
html_show_sourcelink = False
html_copy_source = False
