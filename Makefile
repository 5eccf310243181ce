# Two commands do all the set-up: `make serve` runs the service, `make test` runs the tests.
# Both create .venv and install what they need on first use.

VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= dev,onnx,int8,ray

.PHONY: install serve demo test test-fast test-shuffled mutation mutation-sample lint bench k8s-render clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml package.json package-lock.json
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --silent
	touch $@

serve: install
	$(VENV)/bin/safegen serve

# Tiny random-weight models built locally: the whole service with no download (scores meaningless).
demo: install
	$(PY) scripts/demo-models.py .cache/demo-models
	SAFEGEN_NSFW_MODEL=.cache/demo-models/classifier \
	SAFEGEN_GENERATOR_MODEL=.cache/demo-models/generator \
	$(VENV)/bin/safegen serve

# In file order (deterministic); `make test-shuffled` runs the same suite in a random order.
test: install node_modules/.installed
	bash scripts/system-deps.sh
	$(PY) -m pytest -p no:randomly

test-fast: install node_modules/.installed
	$(PY) -m pytest -p no:randomly -m "not slow"

# pytest-randomly shuffles the tests; the seed is printed (rerun that order: make test-shuffled SEED=N).
test-shuffled: install node_modules/.installed
	bash scripts/system-deps.sh
	$(PY) -m pytest $(if $(SEED),--randomly-seed=$(SEED))

# Mutation testing of the core modules ([tool.mutmut] in pyproject.toml). Not in CI: it takes
# hours on 2 cores (docs/testing.md). Results stay in mutants/; a rerun tests only what changed.
mutation: install
	$(VENV)/bin/mutmut run
	$(PY) scripts/mutation_report.py

# An estimate of every module's score in hours instead of a day: a seeded random sample of
# MUTANTS_PER_MODULE mutants from each module (docs/testing.md). mutmut writes the mutants on its
# first run, so a fresh checkout first runs the first mutant of each imaging function.
MUTANTS_PER_MODULE ?= 20
MUTATION_SEED ?= 1
# MUTATION_SKIP=N leaves out the first N of each module's draw (scored by an earlier run).
MUTATION_SKIP ?= 0
mutation-sample: install
	test -d mutants || $(VENV)/bin/mutmut run "safegen.imaging.x_*__mutmut_1"
	$(VENV)/bin/mutmut run $$($(PY) scripts/mutation_sample.py \
		--per-module $(MUTANTS_PER_MODULE) --seed $(MUTATION_SEED) --skip $(MUTATION_SKIP))
	$(PY) scripts/mutation_report.py

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

bench: install
	$(PY) bench/classify_throughput.py

# Files derived from others: the PrometheusRule (alerts.yml) and the RayService (serve-cluster.yaml).
k8s-render: install
	$(PY) deploy/k8s/render.py

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache
