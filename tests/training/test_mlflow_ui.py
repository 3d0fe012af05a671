"""The MLflow UI in a real browser: what a person sees after a training, checked in Chromium.

The project's own training (`pipelines.train.train_windows`) fills a fresh SQLite store in tmp
with three window runs and three registered versions; `make ui` serves that store on a free port;
headless Chromium (Debian's, see tests/browser.py) opens the experiment (it must land on the runs
table, not MLflow 3's GenAI overview, and show each run's windows as datasets), the runs, each run
and the registered model, and the test reads the pages as rendered. Every page is saved as a
full-page PNG under test-artifacts/mlflow-ui/, failing or not, so a red run shows what the browser
saw.

Without Chromium the install script is tried once; if that fails the tests skip with its error.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import mlflow
import pytest
from mlflow import MlflowClient
from pyspark.sql import SparkSession
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from infra.ports import free_port
from pipelines.config import PROJECT_ROOT, Settings, sqlite_tracking_uri
from pipelines.data.generator import generate_dataset
from pipelines.ingest.window_files import read_manifests, write_windows
from pipelines.train import train_windows
from pipelines.training.fitting import training_windows
from pipelines.training.tracking import (
    EXPERIMENT_KIND_TAG,
    MODEL_DEVELOPMENT,
    TrainedWindow,
    experiment_page,
)
from tests.browser import chromium_unavailable, headless_chromium, save_full_page

pytestmark = [pytest.mark.slow, pytest.mark.spark]

ROWS = 30_000
# One k per window keeps the training to a few Spark jobs; the UI shows the same runs either way.
K = 4
SCREENSHOTS = PROJECT_ROOT / "test-artifacts" / "mlflow-ui"
UI_START_SECONDS = 180  # four uvicorn workers importing MLflow on a busy two-core machine
PAGE_SECONDS = 60
SILHOUETTE_COL = "metrics.`silhouette`"
RUN_NAME_COL = "attributes.`Run Name`"
DATASET_COL = "attributes.`Dataset`"

T = TypeVar("T")


@dataclass(frozen=True)
class TrainedStore:
    """A served store: where the UI answers and what the training put in it."""

    url: str
    experiment_id: str
    experiment_tags: dict[str, str]
    model_name: str
    trained: list[TrainedWindow]
    digests: dict[int, str]  # window -> the digest in its manifest


class UIServer:
    """`make ui` on a store and port of the test's own, in its own process group."""

    def __init__(self, store_uri: str, port: int, log_path: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        # The Makefile's venv is the one running the tests; `-o install` keeps make from
        # (re)installing anything in the middle of a test run.
        venv = os.path.relpath(sys.prefix, PROJECT_ROOT)
        command = ["make", "-C", str(PROJECT_ROOT), "-o", "install", "ui", f"VENV={venv}"]
        env = {**os.environ, "MLFLOW_TRACKING_URI": store_uri, "MLFLOW_UI_PORT": str(port)}
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_until_up(self, timeout: float = UI_START_SECONDS) -> None:
        """Poll /health until the server answers; fail with its log if it exits or never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"`make ui` exited {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(1)
        pytest.fail(f"`make ui` silent at {self.url} for {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop make, mlflow and its uvicorn workers: the process group our child leads.

        Waits for every member, not just make: MLflow takes a few seconds to shut down here.
        """
        group = self.process.pid  # start_new_session: the group id is our child's pid
        for sig, grace in ((signal.SIGTERM, 60), (signal.SIGKILL, 10)):
            if self._group_gone(after=0):
                return
            os.killpg(group, sig)
            if self._group_gone(after=grace):
                return
        pytest.fail(f"`make ui` process group {group} outlived SIGKILL")

    def _group_gone(self, after: float) -> bool:
        deadline = time.monotonic() + after
        while True:
            self.process.poll()  # reap make, else its zombie keeps the group alive
            try:
                os.killpg(self.process.pid, 0)
            except ProcessLookupError:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)


@pytest.fixture(scope="module")
def chromium() -> None:
    """Chromium or a skip saying why not; asked first, so no training is wasted on a skip."""
    reason = chromium_unavailable()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def browser(chromium: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for stale in SCREENSHOTS.glob("*.png"):
        stale.unlink()
    driver = headless_chromium(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def store(
    chromium: None, spark: SparkSession, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TrainedStore]:
    """Train three windows into a fresh store while `make ui` starts on it (both take a while)."""
    root = tmp_path_factory.mktemp("mlflow-ui")
    uri = sqlite_tracking_uri(root / "store")
    MlflowClient(uri).search_experiments()  # create the schema before two processes open it
    settings = replace(Settings.from_env(), mlflow_tracking_uri=uri)
    server = UIServer(uri, free_port(), root / "mlflow-ui.log")
    previous_uri = mlflow.get_tracking_uri()
    try:
        write_windows(generate_dataset(ROWS, seed=7)[0], root / "windows")
        trained = train_windows(root / "windows", k=K, settings=settings, spark=spark)
        mlflow.set_tracking_uri(previous_uri)
        server.wait_until_up()
        experiment = MlflowClient(uri).get_experiment_by_name(settings.experiment_name)
        digests = {m.window: m.digest for m in read_manifests(root / "windows")}
        yield TrainedStore(
            server.url,
            experiment.experiment_id,
            experiment.tags,
            settings.model_name,
            trained,
            digests,
        )
    finally:
        mlflow.set_tracking_uri(previous_uri)
        server.stop()


def _wait(driver: WebDriver, what: str, condition: Callable[[WebDriver], T]) -> T:
    """Wait for the single-page app to render `what`; re-renders may stale elements meanwhile."""
    try:
        return WebDriverWait(
            driver, PAGE_SECONDS, ignored_exceptions=(StaleElementReferenceException,)
        ).until(condition)
    except TimeoutException:
        pytest.fail(f"{what} not shown within {PAGE_SECONDS} s at {driver.current_url}")


@contextmanager
def _screenshot(driver: WebDriver, name: str) -> Iterator[None]:
    """Save the page as it stands when the block ends, passing or failing."""
    try:
        yield
    finally:
        save_full_page(driver, SCREENSHOTS / f"{name}.png")


def _close_assistant(driver: WebDriver) -> None:
    """MLflow 3 opens its chat panel on first load; closed, the pages use the whole width."""
    for button in driver.find_elements(
        By.CSS_SELECTOR, "[data-component-id='mlflow.assistant.chat_panel.close']"
    ):
        if button.is_displayed():
            button.click()


def _cell(driver: WebDriver, run_id: str, column: str) -> str | None:
    cells = driver.find_elements(
        By.CSS_SELECTOR, f"[role='row'][row-id='{run_id}'] [col-id='{column}']"
    )
    return cells[0].text.strip() if cells else None


def _show_metric_column(driver: WebDriver, metric: str) -> None:
    """Tick the metric in the runs table's column picker, as a person would."""
    driver.find_element(By.XPATH, "//button[normalize-space()='Columns']").click()
    search = _wait(
        driver,
        "the column picker",
        lambda d: d.find_element(By.CSS_SELECTOR, "input[placeholder='Search columns']"),
    )
    search.send_keys(metric)
    checkbox = _wait(
        driver,
        f"metric {metric} in the column picker",
        lambda d: d.find_element(
            By.XPATH,
            "//*[@role='dialog']//*[contains(@class, 'tree-treenode')]"
            f"[normalize-space()='{metric}']//*[contains(@class, 'tree-checkbox')]",
        ),
    )
    checkbox.click()
    search.send_keys(Keys.ESCAPE)


def test_experiment_runs_show_each_window_with_its_silhouette(
    browser: WebDriver, store: TrainedStore
) -> None:
    browser.get(f"{store.url}/#/experiments/{store.experiment_id}/runs")

    def column(d: WebDriver, col_id: str) -> dict[str, str] | None:
        """The column's text per run, once every run's cell is rendered."""
        cells = {t.run_id: _cell(d, t.run_id, col_id) for t in store.trained}
        return cells if all(cells.values()) else None

    with _screenshot(browser, "experiment-runs"):
        names = _wait(browser, "the three window runs", lambda d: column(d, RUN_NAME_COL))
        _close_assistant(browser)
        _show_metric_column(browser, "silhouette")
        silhouettes = _wait(browser, "the silhouette column", lambda d: column(d, SILHOUETTE_COL))
    for t in store.trained:
        assert names[t.run_id].splitlines()[-1] == f"window-{t.window}"  # after a colour tag
        assert float(silhouettes[t.run_id]) == pytest.approx(t.silhouette, rel=1e-9)


def test_experiment_opens_on_runs_with_the_windows_each_model_saw(
    browser: WebDriver, store: TrainedStore
) -> None:
    """The experiment link lands on the runs table, whose Dataset column lists every window a
    run was trained on (name and digest, context Training); a window's drawer names its source."""
    assert store.experiment_tags[EXPERIMENT_KIND_TAG] == MODEL_DEVELOPMENT
    browser.get(experiment_page(store.url, store.experiment_id))
    runs_path = f"#/experiments/{store.experiment_id}/runs"

    def datasets(d: WebDriver) -> dict[str, str] | None:
        cells = {t.run_id: _cell(d, t.run_id, DATASET_COL) for t in store.trained}
        return cells if runs_path in d.current_url and all(cells.values()) else None

    def expanded(d: WebDriver) -> dict[str, str] | None:
        """The Dataset cells once "Expand rows" lists every window of the last run."""
        cells = datasets(d)
        return cells if cells and cells[store.trained[-1].run_id].count("window-") == 3 else None

    with _screenshot(browser, "experiment-opens-on-runs"):
        _wait(browser, "the runs table with a Dataset column", datasets)
        _close_assistant(browser)
        browser.find_element(By.XPATH, "//*[normalize-space()='Expand rows']").click()
        shown = _wait(browser, "every dataset of each run", expanded)
    assert "/overview" not in browser.current_url
    for t in store.trained:
        expected = []
        for window in training_windows(t.window, "cumulative"):
            expected += [f"window-{window} ({store.digests[window]})", "Training"]
        assert shown[t.run_id].splitlines() == expected

    last = store.trained[-1]
    with _screenshot(browser, f"dataset-window-{last.window}"):
        browser.find_element(
            By.XPATH,
            f"//*[@row-id='{last.run_id}']//*[@col-id='{DATASET_COL}']"
            f"//*[starts-with(normalize-space(), 'window-{last.window} (')]",
        ).click()
        drawer = _wait(
            browser,
            "the dataset drawer",
            lambda d: next(
                (e.text for e in d.find_elements(By.CSS_SELECTOR, "[role='dialog']") if e.text),
                None,
            ),
        )
    assert f"Digest: {store.digests[last.window]}" in drawer
    assert f"kafka://{Settings.kafka_topic}?offsets=" in drawer


@pytest.mark.parametrize("window", [1, 2, 3])
def test_run_page_shows_the_window_and_its_silhouette(
    browser: WebDriver, store: TrainedStore, window: int
) -> None:
    trained = store.trained[window - 1]
    browser.get(f"{store.url}/#/experiments/{store.experiment_id}/runs/{trained.run_id}")

    def silhouette_row(d: WebDriver) -> str | None:
        rows = [r.text for r in d.find_elements(By.CSS_SELECTOR, "[role='row']")]
        return next((r for r in rows if r.splitlines()[:1] == ["silhouette"]), None)

    with _screenshot(browser, f"run-window-{window}"):
        row = _wait(browser, "the silhouette metric", silhouette_row)
        _close_assistant(browser)
        headings = _wait(
            browser,
            "the run name",
            lambda d: [h.text for h in d.find_elements(By.TAG_NAME, "h2") if h.text] or None,
        )
    assert f"window-{window}" in headings
    assert float(row.splitlines()[1]) == pytest.approx(trained.silhouette, rel=1e-9)


def test_registered_model_shows_three_versions_with_their_aliases(
    browser: WebDriver, store: TrainedStore
) -> None:
    browser.get(f"{store.url}/#/models/{store.model_name}")

    def version_rows(d: WebDriver) -> dict[int, str] | None:
        rows = {}
        for row in d.find_elements(By.CSS_SELECTOR, "[role='row']"):
            found = re.match(r"Version (\d+)\b", row.text)
            if found:
                rows[int(found.group(1))] = row.text
        return rows if len(rows) >= len(store.trained) else None

    with _screenshot(browser, "registered-model"):
        rows = _wait(browser, "the three model versions", version_rows)
        _close_assistant(browser)
    assert sorted(rows) == [t.version for t in store.trained] == [1, 2, 3]
    for t in store.trained:
        aliases = re.findall(r"@\s*(\S+)", rows[t.version])
        assert aliases == [t.alias] == [f"model{t.window}"], rows[t.version]
