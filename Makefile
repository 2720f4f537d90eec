# Two entry points, each doing its own set-up on a fresh machine:
#   make demo   train a BNN on the bundled digits, convert it for arm64, evaluate and time it
#   make test   install with the test extras and run the test suite (make test-all: and the
#               slow tests and the acceptance tour)

# The stack supports Python 3.10-3.12; take the first one found.
PYTHON ?= $(shell for p in python3.11 python3.12 python3.10 python3; do \
	command -v $$p >/dev/null 2>&1 && echo $$p && break; done)
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR := demo
STAMP := $(VENV)/.installed

.PHONY: demo test test-all install clean

$(STAMP): setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; \
		sys.exit(0 if (3, 10) <= v <= (3, 12) else "bnn needs Python 3.10-3.12, found %d.%d" % v)'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# uv installs the stack (TensorFlow is ~600 MB) in ~20 s where pip takes ~45 s: it downloads
	@# in parallel and links from its cache. --compile-bytecode as pip does: without .pyc files
	@# (e.g. under PYTHONDONTWRITEBYTECODE) every process compiles TensorFlow again on import.
	@# Where uv cannot be had or cannot reach the index that pip is configured for (uv does not
	@# read pip.conf), pip installs the same pins.
	$(BIN)/python -m pip install --quiet uv && $(BIN)/python -m uv pip install --quiet --compile-bytecode \
		--python $(BIN)/python -e '.[test]' \
		|| $(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

install: $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(BIN)/bnn train binary-densenet28 --dataset digits --epochs 3 --batch-size 32 \
		--verbose 2 --output $(DEMO_DIR)/run
	$(BIN)/bnn convert $(DEMO_DIR)/run --target arm64 -o $(DEMO_DIR)/model.tflite
	$(BIN)/bnn evaluate $(DEMO_DIR)/model.tflite
	$(BIN)/bnn benchmark $(DEMO_DIR)/model.tflite --threads 1 --runs 50

# `make test`: the whole suite but its `slow` tests (deeper or larger siblings of fast tests, e.g.
# converting BinaryDenseNet37/45 after 28) and the `acceptance` tour (tests/acceptance: bad
# inputs and faults on every command, as child processes); `make test-all` runs those too.
# Two pytest-xdist workers, one per core, each taking whole test modules (a module's fixtures
# are built once), the slowest modules first (tests/conftest.py SLOW_MODULES). Trained and
# converted artefacts are made once per run of the suite and shared by both workers through
# pytest's cache folder (tests/artefacts.py).
PYTEST := $(BIN)/python -m pytest -n 2 --dist loadscope --no-loadscope-reorder
# bnn's own modules byte-compiled first (0.3 s): the ~60 child processes the suite starts (`bnn`
# commands, import checks) then read them instead of compiling them again, 0.3 s each; Python
# writes no .pyc files itself where PYTHONDONTWRITEBYTECODE is set.
COMPILE := $(BIN)/python -m compileall -q bnn_keras models convert cli.py

test: $(STAMP)
	$(COMPILE)
	$(PYTEST) -m "not slow and not acceptance"

test-all: $(STAMP)
	$(COMPILE)
	$(PYTEST)

clean:
	rm -rf $(VENV) $(DEMO_DIR) build *.egg-info
	find bnn_keras models convert tests benchmarks -name __pycache__ -prune -exec rm -rf {} +
	rm -rf __pycache__
