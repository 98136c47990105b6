# The commands a new user needs (README.md): `make demo`, `make lab` and `make test`.
# Each creates .venv on first use and reinstalls only when the content of pyproject.toml or the constraints changes.
# `make demo` and `make lab` install the library with its runtime extras only; `make test` adds the dev tools.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SUM    := $(shell cat pyproject.toml constraints-dev.txt 2>/dev/null | cksum | cut -d' ' -f1)
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints-dev.txt

.PHONY: demo lab test install docs bench clean aitk

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip

# the stamps' names hold the checksum of pyproject.toml + constraints: new content, new stamps
$(VENV)/.runtime-$(SUM): | $(BIN)/python
	test -e $(VENV)/.dev-$(SUM) || $(PIP) -e ".[tensorboard,diffusers]"
	rm -f $(VENV)/.runtime-* && touch $@

$(VENV)/.lab-$(SUM): | $(BIN)/python
	$(PIP) -e ".[tensorboard,diffusers,lab]"
	rm -f $(VENV)/.lab-* && touch $@

$(VENV)/.dev-$(SUM): | $(BIN)/python
	$(PIP) -e ".[dev]"
	rm -f $(VENV)/.dev-* && touch $@

install: $(VENV)/.dev-$(SUM)

## ai-toolkit's own environment (its pinned requirements, from ../shared/aitk-harness), apart from .venv, with this
## library installed in it: tests/test_ai_toolkit.py runs ai-toolkit's trainer there. Skipped where ../shared lacks it.
AITK_VENV    := .aitk-venv
AITK_HARNESS := ../shared/aitk-harness
AITK_SUM     := $(shell cat $(AITK_HARNESS)/req-min.txt $(AITK_HARNESS)/constraints.txt 2>/dev/null | cksum | cut -d' ' -f1)
$(AITK_VENV)/.ok-$(AITK_SUM):
	@if [ -f $(AITK_HARNESS)/req-min.txt ]; then \
	  $(PYTHON) -m venv $(AITK_VENV) && \
	  $(AITK_VENV)/bin/python -m pip install --quiet --disable-pip-version-check torch==2.13.0 fastcore \
	    -r $(AITK_HARNESS)/req-min.txt -c $(AITK_HARNESS)/constraints.txt && \
	  rm -f $(AITK_VENV)/.ok-* && touch $@; \
	else echo "no $(AITK_HARNESS): the ai-toolkit test will be skipped"; fi
aitk: $(AITK_VENV)/.ok-$(AITK_SUM)

## The main job: a 40-picture LoRA dataset with wrong captions, a LoRA trained on the shipped base pipeline, the caption check.
demo: $(VENV)/.runtime-$(SUM)
	$(BIN)/caption-eval demo $(DEMO_ARGS)

## JupyterLab on the tutorials (the lessons of every module are in nbs/).
lab: $(VENV)/.lab-$(SUM)
	$(BIN)/jupyter lab nbs/tutorials

## The whole test suite: notebooks clean and exported, every lesson, every pytest.
test: $(VENV)/.dev-$(SUM) $(AITK_VENV)/.ok-$(AITK_SUM)
	@export OMP_NUM_THREADS=1 PATH="$(CURDIR)/$(BIN):$$PATH"; failed=""; \
	python .ci/check_sync.py                || failed="$$failed sync"; \
	nbdev-test --n-workers 2 --timing       || failed="$$failed nbdev-test"; \
	python -m pytest -q --durations=15      || failed="$$failed pytest"; \
	if [ -n "$$failed" ]; then echo "FAILED:$$failed"; exit 1; fi; echo "all checks passed"

## Static docs site from nbdev's processed notebooks (no Quarto needed).
docs: $(VENV)/.dev-$(SUM)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python tools/build_docs.py

bench: $(VENV)/.dev-$(SUM)
	for f in bench/bench_*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) $(AITK_VENV) _proc _docs _site build dist *.egg-info
