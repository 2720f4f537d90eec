# Two entry points, each doing its own set-up on a fresh machine:
#   make demo   train a BNN on the bundled digits, convert it for arm64, evaluate and time it
#   make test   install with the test extras and run the whole test suite

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
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

install: $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(BIN)/bnn train binary-densenet28 --dataset digits --epochs 3 --batch-size 32 \
		--verbose 2 --output $(DEMO_DIR)/run
	$(BIN)/bnn convert $(DEMO_DIR)/run --target arm64 -o $(DEMO_DIR)/model.tflite
	$(BIN)/bnn evaluate $(DEMO_DIR)/model.tflite
	$(BIN)/bnn benchmark $(DEMO_DIR)/model.tflite --threads 1 --runs 50

# `slow` tests repeat what their faster siblings check on deeper variants (e.g. converting
# BinaryDenseNet37/45 after 28); `make test-all` runs them too. One pytest process per test
# package: TensorFlow keeps much of what the models of ~700 tests allocate, and one process for
# the whole suite grew past this machine's 24 GB. Every package runs; any failure fails.
TEST_PACKAGES := $(sort $(dir $(wildcard tests/*/__init__.py)))
PYTEST_EACH = status=0; for package in $(TEST_PACKAGES); do echo "== $$package"; \
	$(BIN)/python -m pytest -q $(1) $$package || status=1; done; exit $$status

test: $(STAMP)
	@$(call PYTEST_EACH,-m "not slow")

test-all: $(STAMP)
	@$(call PYTEST_EACH,)

clean:
	rm -rf $(VENV) $(DEMO_DIR) build *.egg-info
