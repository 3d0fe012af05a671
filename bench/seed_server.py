"""The seed's way of serving, for comparison only: Flask in the same process as a SparkSession, one
Spark `transform` per request, on the registered version an alias points at.

    python -m bench.seed_server --port 5002 --alias model1

Not part of the project's server (serving/); `python -m bench.serve` starts it.
"""

from __future__ import annotations

import argparse

import mlflow
from flask import Flask, jsonify, request
from pyspark.sql import SparkSession

from pipelines.config import Settings
from pipelines.data.schema import FEATURES


def create_app(model_uri: str) -> Flask:
    spark = (
        SparkSession.builder.master("local[2]")
        .appName("seed-server")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .getOrCreate()
    )
    model = mlflow.spark.load_model(model_uri)
    prediction_col = model.stages[-1].getPredictionCol()
    app = Flask(__name__)

    @app.get("/health")
    def health():
        return jsonify(status="ok")

    @app.post("/predict")
    def predict():
        body = request.get_json()
        records = body if isinstance(body, list) else [body]
        rows = [tuple(float(r[f]) for f in FEATURES) for r in records]
        frame = spark.createDataFrame(rows, schema=list(FEATURES))
        clusters = [r[0] for r in model.transform(frame).select(prediction_col).collect()]
        if isinstance(body, list):
            return jsonify(clusters=clusters)
        return jsonify(cluster=clusters[0])

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=5002)
    parser.add_argument("--alias", default="model1")
    args = parser.parse_args()
    settings = Settings.from_env()
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    app = create_app(f"models:/{settings.model_name}@{args.alias}")
    app.run(host="127.0.0.1", port=args.port, threaded=True)


if __name__ == "__main__":
    main()
