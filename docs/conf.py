"""Sphinx configuration for the comm documentation (build with `nox -s docs`).

The HTML lands in docs/_build/html (open docs/_build/html/index.html).

The build uses no network: no intersphinx. `nox -s docs` builds the HTML and
then runs the examples on the pages with the doctest builder.
"""

from __future__ import annotations

import sys
from pathlib import Path

import comm_core

# The directives that generate tables from the code live in docs/_ext.
sys.path.insert(0, str(Path(__file__).parent / "_ext"))

project = "comm"
author = "The comm developers"
copyright = "the comm developers"
release = comm_core.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "comm_docs",
]

# -- autodoc and napoleon (the code's docstrings are Google style) ------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# "Attributes:" sections become fields of their class, not separate objects.
napoleon_use_ivar = True
nitpicky = False

# -- doctest: the examples on the pages run over inproc and tcp on 127.0.0.1 --------------
doctest_global_setup = """
import asyncio
import importlib.util

import comm_core
from comm_core import *

# The tls examples run where comm-tls is installed (the docs session installs it).
HAVE_TLS = importlib.util.find_spec("comm_tls") is not None
# The ws examples run where comm-ws is installed.
HAVE_WS = importlib.util.find_spec("comm_ws") is not None
"""
# Run `>>>` blocks everywhere, those of the docstrings pulled in by autodoc included.
doctest_test_doctest_blocks = "default"

exclude_patterns = ["_build"]
html_theme = "alabaster"
html_theme_options = {
    "description": "Message-oriented communication for Python distributed systems",
    "fixed_sidebar": True,
    # A column wide enough for code lines of 100 characters (see _static/comm.css).
    "page_width": "1140px",
    "body_max_width": "none",
}
html_static_path = ["_static"]
html_css_files = ["comm.css"]
html_title = f"comm {release}"
