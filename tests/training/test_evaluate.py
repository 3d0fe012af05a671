"""`python -m pipelines.evaluate`: the recipe on one UCI-format file, without Kafka or MLflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from pipelines.config import PROJECT_ROOT
from pipelines.data.generator import generate_dataset, write_csv
from pipelines.evaluate import main
from pipelines.training.evaluate import evaluate, report
from pipelines.training.segments import SEGMENT_COLUMNS
from pipelines.training.selection import FIXED, SILHOUETTE

# <parent>/main and <parent>/shared; a worktree under <parent>/wt/<name> looks one level up.
SHARED_DATA = [p / "shared" / "data" for p in (PROJECT_ROOT.parent, PROJECT_ROOT.parent.parent)]
HEAD_II = "online_retail_II_head.csv"  # the first 99 lines of Online Retail II: 7 customers


def sample(name: str) -> Path:
    for folder in SHARED_DATA:
        if (folder / name).is_file():
            return folder / name
    pytest.fail(f"missing test sample {name} in {SHARED_DATA}", pytrace=False)


def test_a_missing_file_is_an_error_without_spark(tmp_path: Path, capsys) -> None:
    assert main(["--input", str(tmp_path / "nope.csv")]) == 2
    assert "no such file" in capsys.readouterr().out


@pytest.mark.spark
def test_cli_on_the_real_file_head_prints_and_writes_json(tmp_path: Path) -> None:
    """The entry point in its own process, as a person (or `mlflow run -e evaluate`) runs it."""
    output = tmp_path / "out" / "result.json"
    command = [sys.executable, "-m", "pipelines.evaluate", "--input", str(sample(HEAD_II))]
    command += ["--output", str(output), "--spark-master", "local[2]"]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    done = subprocess.run(
        command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]

    result = json.loads(output.read_text())
    assert (result["rows_read"], result["customers"]) == (99, 7)
    assert result["transform"] == "signed-log1p" and result["k_range"] == [3, 8]
    # silhouette needs k < customers: 3..6 of 3..8
    assert [c["k"] for c in result["candidates"]] == [3, 4, 5, 6]
    (chosen,) = [c for c in result["candidates"] if c["chosen"]]
    assert chosen["k"] == result["chosen_k"] and chosen["eligible"]
    assert sum(c["customers"] for c in result["clusters"]) == 7
    assert len(result["clusters"]) == result["chosen_k"]
    assert f"chosen: k={result['chosen_k']} (silhouette)" in done.stdout
    assert "tried 3..6" in done.stdout and "median_TotalAmount" in done.stdout


@pytest.mark.spark
def test_fixed_k_on_the_real_file_head(spark: SparkSession) -> None:
    result = evaluate(spark, sample(HEAD_II), k=4)

    assert [c.k for c in result.candidates] == [4]
    assert (result.chosen.k, result.selection.rule) == (4, FIXED)
    assert "k fixed at 4" in report(result)


@pytest.mark.spark
def test_generated_file_every_candidate_scored_and_the_choice_explained(
    spark: SparkSession, tmp_path: Path
) -> None:
    frame, _ = generate_dataset(20_000, 3)
    path = write_csv(frame, tmp_path / "generated.csv")
    result = evaluate(spark, path)
    data = result.to_dict()
    text = report(result)

    assert [c["k"] for c in data["candidates"]] == [3, 4, 5, 6, 7, 8]
    assert data["rows_kept"] + sum(data["dropped"].values()) == data["rows_read"] == 20_000
    assert result.selection.rule == SILHOUETTE
    eligible = [c for c in data["candidates"] if c["eligible"]]
    assert data["chosen_k"] == max(eligible, key=lambda c: c["silhouette"])["k"]
    for candidate in data["candidates"]:
        assert sum(candidate["cluster_sizes"]) == data["customers"]
        assert candidate["eligible"] == (candidate["min_cluster_share"] >= 0.02)
        if not candidate["eligible"]:
            assert candidate["why_not"].startswith("ineligible: smallest cluster")
            assert "ineligible" in text
    profile = result.profile
    assert profile["customers"].sum() == data["customers"]
    assert profile["share"].sum() == pytest.approx(1.0)
    # The named segments every training run logs, one row per cluster of the chosen k.
    assert ["cluster", *profile.columns] == list(SEGMENT_COLUMNS)
    assert len(profile) == data["chosen_k"] and profile["name"].is_unique
    assert all(name in text for name in profile["name"])
    json.dumps(data)  # plain JSON types throughout
