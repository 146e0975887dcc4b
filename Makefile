# Two commands on a fresh machine:  `make demo` (the main job) and `make test`.
# Both create .venv and install what is missing first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo up test check bench bench-matching clean-venv

# torch and torchvision come from this machine's disk at these versions. facenet-pytorch
# pins torch<2.3 and numpy<2; its code runs fine on the versions above, so it is installed
# without its pins, as a separate step.
$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --quiet --upgrade pip
	$(PY) -m pip install --quiet --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --quiet --no-deps facenet-pytorch==2.6.0
	touch $(STAMP)

# The browser tests drive Debian's chromium; Playwright's own browser download is never used.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/s2a demo

up: $(STAMP)
	$(VENV)/bin/s2a up

test: $(STAMP) $(CHROMIUM)
	$(VENV)/bin/pytest -q

check: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(PY) bench/ingest.py

bench-matching: $(STAMP)
	$(PY) bench/matching.py

clean-venv:
	rm -rf $(VENV)
