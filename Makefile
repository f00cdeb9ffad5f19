# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Real MNIST lives beside the checkout on our machines; elsewhere set INKWELL_DATA_DIR yourself.
ifneq ($(wildcard ../shared/data/mnist/train-images-idx3-ubyte.gz),)
export INKWELL_DATA_DIR ?= $(abspath ../shared/data/mnist)
endif

.PHONY: run test lint typecheck install clean bench system-packages

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/inkwell up

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# Prometheus, Chromium, nginx, PostgreSQL, wrk: installed when root with apt-get, else one message.
system-packages:
	scripts/system-packages

# The suite mostly waits on the processes it starts, so three pytest-xdist workers fit 2 cores;
# a file's tests stay on one worker, so a module's fixtures (servers, models) start once.
TEST_WORKERS ?= 3

# apt-get and pip side by side (on a fresh machine the Debian packages install while pip
# unpacks torch); each one's output is printed whole when it ends (-O).
test:
	$(MAKE) --no-print-directory -j2 -O system-packages install
	$(MAKE) --no-print-directory lint typecheck
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
