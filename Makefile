# The commands a person types. Every one of them is documented in README.md.
PYTHON  ?= python3.11
VENV    ?= .venv
PY      := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: install kafka-up kafka-down test lint

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

kafka-up: install
	$(PY) -m infra.kafka_broker up

kafka-down:
	$(PY) -m infra.kafka_broker down

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
