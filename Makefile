# ftl-ct: everything a fresh machine needs is behind `make demo` and `make test`.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
MODEL   := models/default
PYTEST_ARGS ?=

.PHONY: install model test test-fast lint format demo bench experiment clean

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: a bare requirement could pull a multi-GB CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) model

model: $(STAMP)
	@if [ ! -f $(MODEL)/manifest.json ]; then \
		$(VENV)/bin/ftl-export fetch-weights >/dev/null && \
		$(VENV)/bin/ftl-export build --out $(MODEL) --labels normal,abnormal && \
		$(VENV)/bin/ftl-export verify $(MODEL) >/dev/null && echo "model: $(MODEL) built and verified"; \
	else echo "model: $(MODEL) present"; fi

# The whole suite but the performance benchmarks (`make bench` runs those).
# pytest exits 5 when it collects nothing: that fails here too.
test: install
	$(VENV)/bin/pytest -m "not perf" $(PYTEST_ARGS)

test-fast: install
	$(VENV)/bin/pytest -m "not slow and not perf" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

demo: install
	$(VENV)/bin/python -m ftlct.bench.demo

clean:
	rm -rf $(VENV) models .cache build *.egg-info .pytest_cache .ruff_cache
