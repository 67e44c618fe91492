# Two commands do everything on a fresh machine that has only Python:
#   make demo   - create the environment if needed and run the main job
#   make test   - create the environment if needed and run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: test demo env clean

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# The suite runs in TEST_WORKERS processes (pytest-xdist, whole files to a worker: a
# file's kernels compile once, in one process); then, alone, the tests marked `serial`,
# which read the machine's load. Compiling kernels is most of the suite's time.
# pytest's status 5 (no test selected: PYTEST_ARGS named files without any of one
# part's tests) is not a failure.
TEST_WORKERS ?= 2

test: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not serial" $(PYTEST_ARGS) || test $$? -eq 5
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest -m serial $(PYTEST_ARGS) || test $$? -eq 5

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

demo: $(BENCH_STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m bench.demo

clean:
	rm -rf $(VENV) build *.egg-info
