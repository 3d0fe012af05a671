# The commands a person types. Every one of them is documented in README.md.
# VERBOSE=1 (e.g. `make demo VERBOSE=1`) shows the output that otherwise goes to logs/ only.
PYTHON  ?= python3.11
VENV    ?= .venv
PY      := $(VENV)/bin/python
SPARK_KAFKA := infra/spark-kafka
# `mlflow models serve` and `mlflow run` exec tools (uvicorn, python, uv) from PATH: the venv's.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export VERBOSE
# BROKERS=3 (`make kafka-up BROKERS=3`, `make produce BROKERS=3`, ...): the local Kafka has that many
# nodes and every client names them all; the same as exporting KAFKA_BROKERS (pipelines/config.py).
ifdef BROKERS
export KAFKA_BROKERS := $(BROKERS)
endif

.PHONY: demo demo-live stop clean install kafka-up kafka-down spark-up spark-down mlflow-server \
        mlflow-server-down generate produce consume train stream evaluate pipeline serve ui test lint \
        bench-stream bench-train bench-serve bench-scale bench-service-memory bench-freshness

# From nothing to three served models: broker, dataset (or DATA=path), stream, train, serve, ask.
demo: install
	@$(PY) -m infra.demo $(if $(VERBOSE),--verbose)

# The stream as it flows: broker, server, the stream service and a producer at a speedup, each
# window trained as it closes and served as the aliases move, until Ctrl-C. SPEEDUP=X.
demo-live: install
	@$(PY) -m infra.demo --live $(if $(VERBOSE),--verbose) $(if $(SPEEDUP),--speedup $(SPEEDUP))

# Stop what the demo started (its server, a live demo's processes, the broker if it started it).
stop:
	$(PY) -m infra.demo stop

# Remove generated data, the local MLflow store and the broker's data (stopping the broker first,
# and the one a killed test session may have left running).
clean:
	-[ -x $(PY) ] && { $(PY) -m infra.demo stop; $(PY) -m infra.kafka_broker down; \
		$(PY) -m infra.spark_cluster down; $(PY) -m infra.mlflow_server down; \
		$(PY) -m infra.kafka_broker down --state-dir test-artifacts/kafka; }
	rm -rf .kafka .spark .mlflow-server mlruns mlflow.db logs test-artifacts
	find data -mindepth 1 ! -name README.md -exec rm -rf {} +

install: $(VENV)/.installed $(SPARK_KAFKA)/lib/.pom.sha256 $(VENV)/spark-classes.jsa

# uv installs the dependencies (pip only installs uv): several times faster than pip on a fresh venv
# (pyspark alone is 300 MB), which is also what the quick-start test does. Compiled to bytecode
# as pip does. The output goes to logs/install.log.
$(VENV)/.installed: pyproject.toml
	@infra/logged.sh logs/install.log "install $(VENV): the project and its dev extras" sh -c \
		'$(PYTHON) -m venv $(VENV) && $(PY) -m pip install uv && \
		 $(VENV)/bin/uv pip install --python $(PY) --compile-bytecode -e ".[dev]"'
	@touch $@

# Spark's Kafka connector (for `pipelines.consume --engine spark`), through Maven like the broker's
# jars; again whenever its pom changes (infra/spark_kafka.py writes the stamp).
$(SPARK_KAFKA)/lib/.pom.sha256: $(SPARK_KAFKA)/pom.xml $(VENV)/.installed
	@infra/logged.sh logs/install.log "fetch Spark's Kafka connector through Maven" \
		$(PY) -m infra.spark_kafka
	@touch $@

# The JVM classes a training loads, archived so that every local Spark session starts faster and
# spends less CPU (pipelines/training/class_archive.py). Without it Spark only starts slower.
$(VENV)/spark-classes.jsa: $(VENV)/.installed
	@infra/logged.sh logs/install.log "archive the JVM classes of a training (class data sharing)" \
		$(PY) -m pipelines.training.class_archive

kafka-up: install
	$(PY) -m infra.kafka_broker up

kafka-down:
	$(PY) -m infra.kafka_broker down

# A standalone Spark master and WORKERS workers (default 2) on 127.0.0.1; state in .spark/.
spark-up: install
	$(PY) -m infra.spark_cluster up $(if $(WORKERS),--workers $(WORKERS))

spark-down:
	$(PY) -m infra.spark_cluster down

# An MLflow tracking server on 127.0.0.1:5005 backed by a PostgreSQL cluster of its own (Debian's
# binaries: infra/install_postgres.sh); state in .mlflow-server/. Then
# MLFLOW_TRACKING_URI=http://127.0.0.1:5005 for every command.
mlflow-server: install
	$(PY) -m infra.mlflow_server up

mlflow-server-down:
	$(PY) -m infra.mlflow_server down

generate: install
	$(PY) -m pipelines.generate

produce: install
	$(PY) -m pipelines.produce

consume: install
	$(PY) -m pipelines.consume

train: install
	$(PY) -m pipelines.train

# Continuous training: consume, and train, register and gate each window as it closes, until
# Ctrl-C. Flags in STREAM_ARGS (e.g. STREAM_ARGS="--mode sliding --window-rows 50000").
stream: install
	$(PY) -m pipelines.stream $(STREAM_ARGS)

# The recipe on one file, without Kafka or MLflow: per k silhouette and cluster shares, the chosen
# k and its clusters. DATA=path (CSV or XLSX; default the generated dataset), EVALUATE_ARGS=flags.
evaluate: install
	$(PY) -m pipelines.evaluate --input "$(or $(DATA),data/online_retail.csv)" $(EVALUATE_ARGS)

# The whole path through MLflow Projects: generate if missing -> produce -> consume -> train.
pipeline: install
	$(VENV)/bin/mlflow run . -e main --env-manager local --experiment-name customer-segmentation

serve: install
	$(PY) -m serving $(SERVE_ARGS)

# A tracking server (an http:// URI) serves the UI itself: there is nothing to start.
ui: install
	@uri="$$($(PY) -m pipelines.config mlflow_tracking_uri)"; case "$$uri" in \
	http://*|https://*) echo "the tracking server serves the MLflow UI: open $$uri";; \
	*) $(VENV)/bin/mlflow ui --backend-store-uri "$$uri" \
		--host 127.0.0.1 --port "$${MLFLOW_UI_PORT:-5001}";; esac

# The tests start the Kafka broker they need when none answers, and stop it (tests/conftest.py).
# The files are spread over TEST_WORKERS pytest-xdist workers (0: all in this process), the files
# with slow tests first (tests/conftest.py). Most tests wait on a JVM, a broker or a subprocess:
# three workers keep two cores busy where two left them a third idle.
TEST_WORKERS ?= 3
test: install
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench-stream: install
	$(PY) -m bench.stream

bench-train: install
	$(PY) -m bench.train

bench-serve: install
	$(PY) -m bench.serve $(BENCH_ARGS)

# Cost per row at 1x, 4x and 10x the default dataset: ingestion, peak memory, training local and
# on a standalone cluster (BENCH_ARGS, e.g. "--scales 1,10 --train local").
bench-scale: install
	$(PY) -m bench.scale $(BENCH_ARGS)

# Peak memory of the stream service with windows 1x and 10x the default size (issue 11).
bench-service-memory: install
	$(PY) -m bench.service_memory $(BENCH_ARGS)

# From a window's close to the server answering with its version, per window of a live replay.
bench-freshness: install
	$(PY) -m bench.freshness $(BENCH_ARGS)
