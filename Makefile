# The two commands a new user needs (README.md): `make demo` and `make test`.
# Each creates .venv on first use and reinstalls only when the content of pyproject.toml or the constraints changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints-dev.txt 2>/dev/null | cksum | cut -d' ' -f1)
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints-dev.txt

.PHONY: demo test install docs bench clean

$(STAMP):  # the name holds the checksum of pyproject.toml + constraints: new content, new stamp
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -e ".[dev]"
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

## The main job: train on digits with corrupted labels, track per-item loss, validate, save, plot.
demo: $(STAMP)
	$(BIN)/caption-eval demo $(DEMO_ARGS)

## The whole test suite: notebooks clean and exported, every lesson, every pytest.
test: $(STAMP)
	@export OMP_NUM_THREADS=1 PATH="$(CURDIR)/$(BIN):$$PATH"; failed=""; \
	python .ci/check_sync.py                || failed="$$failed sync"; \
	nbdev-test --n-workers 2 --timing       || failed="$$failed nbdev-test"; \
	python -m pytest -q --durations=15      || failed="$$failed pytest"; \
	if [ -n "$$failed" ]; then echo "FAILED:$$failed"; exit 1; fi; echo "all checks passed"

## Static docs site from nbdev's processed notebooks (no Quarto needed).
docs: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python tools/build_docs.py

bench: $(STAMP)
	for f in bench/bench_*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) _proc _docs _site build dist *.egg-info
