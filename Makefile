# Two entry points: `make course` (set up and open the notebooks) and `make test` (set up and run every check).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
NO_BROWSER ?=
# JupyterLab refuses to start as root (containers, cloud machines) unless told --allow-root.
JUPYTER_FLAGS := $(if $(NO_BROWSER),--no-browser,) $(if $(filter 0,$(shell id -u)),--allow-root,)
COURSE_SERVER = $(BIN)/jupyter lab $(JUPYTER_FLAGS) notebooks/
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb)) $(sort $(wildcard notebooks/solutions/*.ipynb))

.PHONY: course course-command test unit notebooks venv clean-notebooks reference-outputs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

$(VENV)/.course: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -e . jupyterlab ipykernel
	touch $@

$(VENV)/.dev: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -e ".[dev]"
	touch $@

venv: $(VENV)/.dev

## Set up and open the course in JupyterLab (NO_BROWSER=1 for a remote machine).
course: $(VENV)/.course
	$(COURSE_SERVER)

# The server command `make course` runs, printed (tests/test_course_server.py starts it headless).
course-command:
	@echo '$(COURSE_SERVER)'

## Set up, then run the unit tests and every notebook under nbval in smoke mode.
test: $(VENV)/.dev unit notebooks

unit: $(VENV)/.dev
	KDTEACH_SMOKE=1 $(BIN)/python -m pytest -q tests

notebooks: $(VENV)/.dev
	KDTEACH_SMOKE=1 NBVAL_CHECK_OUTPUT=1 $(BIN)/python -m pytest -q --nbval-lax --nbval-cell-timeout=600 -p no:cacheprovider $(NOTEBOOKS)

## Strip outputs before committing; cells marked keep_output (nbval's NBVAL_CHECK_OUTPUT references) keep theirs.
clean-notebooks: $(VENV)/.dev
	$(BIN)/nbstripout $(NOTEBOOKS)
	$(BIN)/python .ci/notebook_references.py $(NOTEBOOKS)

## Re-execute the notebooks in smoke mode to refresh the stored references of NBVAL_CHECK_OUTPUT cells, then strip.
reference-outputs: $(VENV)/.dev
	KDTEACH_SMOKE=1 $(BIN)/jupyter nbconvert --to notebook --execute --inplace $(NOTEBOOKS)
	$(MAKE) clean-notebooks
