# The few commands people run. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch (it lies on this kind of machine's disk). GPU hosts: install a CUDA build of
# torch into the venv first and run with TORCH= (empty) so this step leaves it alone.
TORCH ?= torch==2.13.0

.PHONY: help install browser demo test lint bench clean

help: ## list the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@if [ -n "$(TORCH)" ]; then echo "installing $(TORCH)"; $(PY) -m pip install --quiet "$(TORCH)"; fi
	$(PY) -m pip install --quiet -e ".[test]"
	@touch $@

install: $(VENV)/.installed ## create .venv and install the package with its test tools

demo: install ## run the offline demo: embedded broker, SQLite, sample images -> verdicts and review messages
	$(VENV)/bin/moderation demo

# The console's browser tests drive Debian's chromium through Playwright (browser downloads are blocked,
# so `playwright install` is no way to get one): installed with apt-get when missing.
browser: ## install Debian's chromium for the browser tests, if it is missing
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing chromium (apt-get) for the console's browser tests"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

test: install browser ## run the whole test suite (real broker, SQLite and PostgreSQL, Chromium)
	$(PY) -m pytest -q

lint: install ## ruff
	$(VENV)/bin/ruff check .

# BENCH_ARGS=--quick for the 3-minute smoke run; the other tools under bench/ are in BENCHMARKS.md.
BENCH_ARGS ?=
bench: install ## the CPU benchmark, bench/run.py (~10 min): a table, and JSON in bench/results/
	$(PY) bench/run.py $(BENCH_ARGS)

clean: ## remove the venv and local data
	rm -rf $(VENV) data build *.egg-info
