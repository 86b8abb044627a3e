# ftl-ct: everything a fresh machine needs is behind `make demo` and `make test`.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
MODEL   := models/default
PYTEST_ARGS ?=

.PHONY: install model test test-fast lint format demo system-deps bench experiment experiment-quick experiment-cnn experiment-kidney clean

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
	@test -x /usr/sbin/mosquitto || { [ "$$(id -u)" = 0 ] && $(MAKE) --no-print-directory system-deps; } \
		|| { echo "make demo needs the Debian package mosquitto: sudo make system-deps"; exit 1; }
	$(VENV)/bin/python -m ftlct.bench.demo

# FTL vs FedAvg vs CFL on real non-IID CT data over 10 splits (README: Experiment). Seeds 10-19
# chose nothing; the settings were chosen on seeds 0-3 and a probe. Time: see the README.
EXPERIMENT_OUT ?= out/experiment
EXPERIMENT_CACHE ?= .cache/bench
EXPERIMENT_SPLITS ?= 10
experiment: install
	nice -n 10 $(VENV)/bin/ftl-bench federation --data ../shared/data/covid-ct --sites 6 --rounds 20 \
		--methods ftl,ftl_closed_form,fedavg,cfl,central,local --seed 10 --splits $(EXPERIMENT_SPLITS) \
		--out $(EXPERIMENT_OUT) --cache-dir $(EXPERIMENT_CACHE)

# The same comparison on 5 splits (seeds 10-14, the first half of `make experiment`'s): all six
# methods, wider intervals; under 30 minutes on 2 cores from an empty cache (README: Experiment).
experiment-quick: install
	nice -n 10 $(VENV)/bin/ftl-bench federation --data ../shared/data/covid-ct --sites 6 --rounds 20 \
		--methods ftl,ftl_closed_form,fedavg,cfl,central,local --seed 10 --splits 5 \
		--out $(EXPERIMENT_OUT)-quick --cache-dir $(EXPERIMENT_CACHE)

# The small CNN from random init (fedavg_cnn, cfl_cnn) on the same splits, as separate rows.
experiment-cnn: install
	nice -n 10 $(VENV)/bin/ftl-bench federation --data ../shared/data/covid-ct --sites 6 --rounds 20 \
		--methods ftl,fedavg_cnn,cfl_cnn,central --seed 10 --splits $(EXPERIMENT_SPLITS) \
		--out $(EXPERIMENT_OUT)-cnn --cache-dir $(EXPERIMENT_CACHE)

# kidney-ct, 4 classes, no patient ids: neighbouring slices leak across any split (optimistic).
experiment-kidney: install
	nice -n 10 $(VENV)/bin/ftl-bench federation --data ../shared/data/kidney-ct --sites 6 --rounds 20 \
		--methods ftl,ftl_closed_form,fedavg,cfl,central,local --seed 10 --splits 5 \
		--out $(EXPERIMENT_OUT)-kidney --cache-dir $(EXPERIMENT_CACHE)

# Every figure of issue 13 beside its anchor (perf.json, perf.md; README: Performance), then
# every benchmark of the suite (pytest -m perf).
BENCH_OUT ?= out/bench
bench: install
	$(VENV)/bin/ftl-bench perf --out $(BENCH_OUT) --model $(MODEL)
	$(VENV)/bin/pytest -m perf $(PYTEST_ARGS)

# The real peers the suite and the demo talk to (root: apt-get); chromium drives the
# dashboard test, systemd brings systemd-analyze for the unit-file tests.
system-deps:
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
		mosquitto mosquitto-clients dcmtk orthanc chromium systemd

clean:
	rm -rf $(VENV) models .cache build *.egg-info .pytest_cache .ruff_cache
