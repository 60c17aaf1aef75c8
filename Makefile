# The two commands of the README's quick start: `make demo` and `make test`.
# Both create .venv (torch 2.13.0 first: a plain `torch` requirement would pull a multi-GB CUDA build).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CHROMIUM ?= /usr/bin/chromium

.PHONY: setup demo test test-fast lint conflict-markers browser clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# Fine-tune the bundled tiny DDPM (the embedded default), evaluate it, publish it to a Hub server on
# 127.0.0.1 and load it back with DDPMPipeline.from_pretrained.
demo: $(STAMP)
	$(BIN)/python -m ddpo_hub.training.publish_job --preset tiny --output-dir runs/tiny --eval-num-images 64 --local-hub --overwrite

# Debian's Chromium for the Space's browser test (Playwright cannot download browsers here).
browser:
	@if [ ! -x "$(CHROMIUM)" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Installing Debian's chromium for the browser test"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi

test: $(STAMP) browser conflict-markers
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# The quick loop while working: everything but the tests marked slow (make test runs them all).
test-fast: $(STAMP) conflict-markers
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP) conflict-markers
	$(BIN)/ruff check .

# A merge's conflict markers (a line starting with <<<<<<< or >>>>>>>, or exactly =======) in a tracked text
# file fail the build: one once reached the README, which is also the wheel's long description.
conflict-markers:
	@if git grep -nIE '^(<{7}|>{7})( |$$)|^={7}$$' -- . ; then \
		echo "Conflict markers found (above): resolve the merge before committing."; exit 1; fi

clean:
	rm -rf $(VENV) runs tests/artifacts
