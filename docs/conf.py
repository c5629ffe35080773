"""Sphinx configuration for the comm documentation (build with `nox -s docs`)."""

from __future__ import annotations

project = "comm"
author = "The comm developers"
copyright = "the comm developers"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
]
# No intersphinx: the docs must build without network access.

autodoc_member_order = "bysource"
autodoc_typehints = "description"
nitpicky = False

exclude_patterns = ["_build"]
html_theme = "alabaster"
