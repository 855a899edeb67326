"""Sphinx configuration of the course site (`make site`): the committed notebooks, the README, the facilitator
guide and the reference results, as a static HTML book.

The notebooks are rendered as committed, never executed (nb_execution_mode = "off"): the site shows the outputs
stored in them. The source folder is the repository root (`sphinx-build -c docs . <out>`), so every link that works
on GitHub (README.md -> notebooks/01_soft_targets.ipynb, a notebook -> the next one) works on the site too;
include_patterns keeps everything else out. Nothing here imports kdteach (the site builds without torch).
"""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The repository's address is written once, in kdteach/runtime.py; read as text so the build needs no torch.
REPO_URL = re.search(r'^REPO_URL = "([^"]+)"', (ROOT / "kdteach" / "runtime.py").read_text(encoding="utf-8"), re.M).group(1)

project = "kdteach"
author = "the kdteach authors"
copyright = "the kdteach authors, MIT license"
root_doc = "docs/index"

extensions = ["myst_nb", "sphinx.ext.githubpages"]  # githubpages writes .nojekyll, so Pages serves _static/
include_patterns = ["README.md", "docs/*.md", "notebooks/*.ipynb", "notebooks/solutions/*.ipynb", "results/README.md",
                    "data/README.md"]
# Pruned before the walk, so the build never lists the virtualenv, the caches or the data.
exclude_patterns = [".venv", ".git", ".cache", "data/MNIST", "runs", "_site", "build", "**/.ipynb_checkpoints", "docs/_root"]

nb_execution_mode = "off"
nb_merge_streams = True  # one block per cell for a cell's printed lines
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3  # the README's #section links
suppress_warnings = ["myst.header"]  # notebooks start at an h1 and may skip a level; harmless in HTML

html_theme = "sphinx_book_theme"
html_title = "Knowledge distillation and its failure modes"
html_extra_path = ["_root"]  # the site's /index.html, which sends a visitor to docs/index.html
html_theme_options = {
    "repository_url": REPO_URL,
    "repository_branch": "main",
    "path_to_docs": "",
    "use_repository_button": True,
    "launch_buttons": {"colab_url": "https://colab.research.google.com"},
    "show_toc_level": 2,
}
html_last_updated_fmt = None
