"""The model server: a Flask app behind granian that answers from MLflow-registered Spark models
without Spark (see serving.predictor)."""

from __future__ import annotations

import sys


def keep_pyspark_out() -> None:
    """Make `import pyspark` fail in this process, unless it is already imported.

    MLflow imports pyspark merely to learn whether it is installed (mlflow.types.schema); in the
    project's environment it is, and the import costs the server about half a second at start and
    memory in every worker. The server entry points call this; importing `serving` does not, since
    the test suite imports it next to Spark.
    """
    sys.modules.setdefault("pyspark", None)
