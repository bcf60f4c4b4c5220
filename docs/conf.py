# Sphinx configuration of the iocpx documentation (docs/). Build it with
#     python -m pip install -r docs/requirements.txt
#     python -m sphinx -W --keep-going -n -b html docs docs/_build/html
# The API reference is generated from the compiled extension's docstrings and signatures
# (setup.py compiles with embedsignature), so iocpx must import: the in-place build in src/
# when there is one (python setup.py build_ext --inplace), else the installed package.
import glob
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")
if glob.glob(os.path.join(SRC, "iocpx", "_core.*.so")) + glob.glob(
        os.path.join(SRC, "iocpx", "_core.*.pyd")):
    sys.path.insert(0, SRC)

import iocpx  # noqa: E402

project = "iocpx"
author = "the iocpx authors"
copyright = "the iocpx authors, MIT licence"
release = version = iocpx.__version__

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.intersphinx"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "requirements.txt"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3                 # [text](page.md#a-heading) links are checked
nitpicky = True                          # every cross-reference must resolve
nitpick_ignore_regex = [
    # types named in the compiled signatures and docstrings that have no page of their own
    ("py:class", r"(ssl\..*|socket\..*|os\.PathLike|bytes-like|buffer|callable|optional)"),
]
intersphinx_mapping = {}                  # no network in CI: Python's own pages are not linked
autodoc_member_order = "bysource"
autodoc_typehints = "none"                # the signatures are the compiled ones, as written
autodoc_docstring_signature = True
suppress_warnings = ["myst.header"]

html_theme = "furo"
html_title = f"iocpx {release}"
html_static_path = []


def plain_docstrings(app, what, name, obj, options, lines):
    """The docstrings are plain text, not reStructuredText: `fn(*args)` and `**options` are
    code, not the start of emphasis."""
    lines[:] = [ln.replace("*", r"\*").replace("|", r"\|") for ln in lines]


def no_self(app, what, name, obj, options, signature, return_annotation):
    """embedsignature writes methods as `listen(self, address=None, ...)`: drop the self."""
    if signature and signature.startswith("(self"):
        signature = "(" + signature[len("(self"):].lstrip(", ")
    return signature, return_annotation


def setup(app):
    app.connect("autodoc-process-docstring", plain_docstrings)
    app.connect("autodoc-process-signature", no_self)
