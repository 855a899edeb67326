# Two entry points: `make course` (set up and open the notebooks) and `make test` (set up and run every check).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
NO_BROWSER ?=
# JupyterLab refuses to start as root (containers, cloud machines) unless told --allow-root.
JUPYTER_FLAGS := $(if $(NO_BROWSER),--no-browser,) $(if $(filter 0,$(shell id -u)),--allow-root,)
COURSE_SERVER = $(BIN)/jupyter lab $(JUPYTER_FLAGS) notebooks/
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb)) $(sort $(wildcard notebooks/solutions/*.ipynb))
# CPU=1 make course: a machine without an NVIDIA GPU gets PyTorch's CPU-only wheels (a few hundred MB) instead of
# the default CUDA build (several GB). Must come first: pip keeps a torch that is already installed.
CPU ?=
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
# The course site: Sphinx reads the repository root with docs/conf.py; the notebooks are rendered, never executed.
SITE_DIR ?= _site
SITE_BUILD = $(BIN)/sphinx-build -b html -q -c docs . $(SITE_DIR)
# The `site` extra's requirements, quoted, from pyproject.toml: `make site` needs them and not torch.
SITE_REQUIREMENTS := $(shell sed -n 's/^site = \[\(.*\)\]$$/\1/p' pyproject.toml | tr -d ',')

.PHONY: course course-command test unit notebooks venv site site-command notebook-outputs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

$(VENV)/.course: $(BIN)/python pyproject.toml
	$(if $(CPU),$(BIN)/python -m pip install torch torchvision --index-url $(TORCH_CPU_INDEX))
	# The text extra too: notebook 04's offline stand-in needs transformers and tokenizers (nothing is downloaded at run time).
	$(BIN)/python -m pip install -e ".[text]" jupyterlab ipykernel
	touch $@

$(VENV)/.dev: $(BIN)/python pyproject.toml
	$(if $(CPU),$(BIN)/python -m pip install torch torchvision --index-url $(TORCH_CPU_INDEX))
	$(BIN)/python -m pip install -e ".[dev,site]"
	touch $@

$(VENV)/.site: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install $(SITE_REQUIREMENTS)
	touch $@

venv: $(VENV)/.dev

## Set up and open the course in JupyterLab (NO_BROWSER=1 for a remote machine).
course: $(VENV)/.course
	$(COURSE_SERVER)

# The server command `make course` runs, printed (tests/test_course_server.py starts it headless).
course-command:
	@echo '$(COURSE_SERVER)'

## Set up, then run the unit tests and every notebook under nbval in smoke mode, side by side: the smoke-size models
## run on one CPU thread each, so on a 2-core machine the two together take about 90 s less than one after the other.
## Each prints its report when it ends (--output-sync), so the two never interleave.
test: $(VENV)/.dev
	@echo "make test: the unit tests and the notebooks run side by side; each prints its report when it ends"
	$(MAKE) --no-print-directory -j2 --output-sync=target unit notebooks

# The unit tests always get a private cache (tests/conftest.py makes one): the notebooks running beside them write
# to KDTEACH_CACHE, and some tests check that a model is trained exactly once.
unit: $(VENV)/.dev
	env -u KDTEACH_CACHE KDTEACH_SMOKE=1 $(BIN)/python -m pytest -q tests

notebooks: $(VENV)/.dev
	KDTEACH_SMOKE=1 NBVAL_CHECK_OUTPUT=1 $(BIN)/python -m pytest -q --nbval-lax --nbval-cell-timeout=600 -p no:cacheprovider $(NOTEBOOKS)

## Build the course site into $(SITE_DIR)/: the committed notebooks (not executed), the README, the facilitator
## guide and the reference results as static HTML. Offline; tests/test_site.py builds it and opens it in Chromium.
site: $(VENV)/.site
	$(SITE_BUILD)
	@echo "The course site is in $(SITE_DIR)/: open $(SITE_DIR)/index.html"

# The build command `make site` runs, printed (tests/test_site.py runs it into a temporary folder).
site-command:
	@echo '$(SITE_BUILD)'

## Execute every course and solutions notebook in full mode and store its outputs in place: what a reader sees on
## GitHub, in nbviewer and on the site before running anything. Set KDTEACH_CACHE to the cache of the runs that wrote
## results/, so the notebooks reload those models and agree with results/ (tests/test_committed_outputs.py checks the
## mode and each experiment's code version); without it they first train every model, as long as the reference runs.
notebook-outputs: $(VENV)/.dev
	$(BIN)/python .ci/store_notebook_outputs.py $(NOTEBOOKS)
