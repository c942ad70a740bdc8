"""Sphinx configuration: the markdown guides (MyST) and the API reference (autodoc)."""

from __future__ import annotations

project = "trio_smtpd"
author = "the trio_smtpd developers"
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.intersphinx"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
# Type hints are shown in the signatures, as written in the code.
autodoc_typehints = "signature"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
intersphinx_mapping: dict[str, tuple[str, None]] = {}
myst_heading_anchors = 3
html_theme = "alabaster"
# The guides link to files of the repository (examples, benchmarks) that are not pages.
suppress_warnings = ["myst.xref_missing"]
