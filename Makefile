# The commands a person types. Every one of them is documented in README.md.
PYTHON  ?= python3.11
VENV    ?= .venv
PY      := $(VENV)/bin/python
# `mlflow models serve` and `mlflow run` exec tools (uvicorn, python) from PATH: use the venv's.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: demo stop clean install kafka-up kafka-down generate produce consume train evaluate \
        pipeline serve ui test lint bench-stream bench-train bench-serve

# From nothing to three served models: broker, dataset (or DATA=path), stream, train, serve, ask.
demo: install
	$(PY) -m infra.demo

# Stop what the demo started (its server, and the broker if the demo started it).
stop:
	$(PY) -m infra.demo stop

# Remove generated data, the local MLflow store and the broker's data (stopping the broker first).
clean:
	-[ -x $(PY) ] && { $(PY) -m infra.demo stop; $(PY) -m infra.kafka_broker down; }
	rm -rf .kafka mlruns mlflow.db logs test-artifacts
	find data -mindepth 1 ! -name README.md -exec rm -rf {} +

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

generate: install
	$(PY) -m pipelines.generate

produce: install
	$(PY) -m pipelines.produce

consume: install
	$(PY) -m pipelines.consume

train: install
	$(PY) -m pipelines.train

# The recipe on one file, without Kafka or MLflow: per k silhouette and cluster shares, the chosen
# k and its clusters. DATA=path (CSV or XLSX; default the generated dataset), EVALUATE_ARGS=flags.
evaluate: install
	$(PY) -m pipelines.evaluate --input "$(or $(DATA),data/online_retail.csv)" $(EVALUATE_ARGS)

# The whole path through MLflow Projects: generate if missing -> produce -> consume -> train.
pipeline: install
	$(VENV)/bin/mlflow run . -e main --env-manager local --experiment-name customer-segmentation

serve: install
	$(PY) -m serving $(SERVE_ARGS)

ui: install
	$(VENV)/bin/mlflow ui --backend-store-uri "$${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db}" \
		--host 127.0.0.1 --port "$${MLFLOW_UI_PORT:-5001}"

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench-stream: install
	$(PY) -m bench.stream

bench-train: install
	$(PY) -m bench.train

bench-serve: install
	$(PY) -m bench.serve $(BENCH_ARGS)
