"""`make demo`: from a fresh clone to three served models, one narrated stage at a time.

    python -m infra.demo [-v]   # broker, dataset, stream, 3 windows, train, serve, ask
    python -m infra.demo stop   # stop the server and the broker the demo started
    python -m infra.demo --live [--speedup X]   # `make demo-live`: infra/demo_live.py

Run it again and it reuses what is there: the stream gets another replay, the consumer cuts the
next three windows, training adds three versions and moves the aliases, and the running server
picks them up. Ctrl-C stops what this run started; `make stop` stops everything the demo started.

What the terminal shows: each stage's title, what its command prints on stdout (its own summary)
and its duration. The rest (logging, progress bars, Spark's and MLflow's start-up lines) goes to
logs/demo/<stage>.log only, unless `-v` (`make demo VERBOSE=1`); a stage that fails prints the
end of its log.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from infra.kafka_broker import DEFAULT_STATE_DIR, running_cluster
from infra.live_stream import DEFAULT_SPEEDUP
from infra.processes import tail_file
from infra.stages import LOG_DIR, Runner, StageFailed, stage
from pipelines.config import DEFAULT_WINDOWS, PROJECT_ROOT, Settings, env_or
from pipelines.contract import EXAMPLE_RECORD
from pipelines.data.load import input_files
from pipelines.ingest.window_files import read_manifests
from serving.settings import ServingSettings

SERVER_PID = PROJECT_ROOT / "logs" / "demo-server.pid"
SERVER_LOG = LOG_DIR / "server.log"
# Present while the broker runs because the demo started it: `stop` then stops it too.
BROKER_MARK = PROJECT_ROOT / "logs" / "demo-started-broker"


def dataset(runner: Runner, settings: Settings) -> Path:
    given = env_or("DATA", "")
    if given:
        path = Path(given)
        try:
            input_files(path)  # a file, a directory of them or a glob
        except FileNotFoundError as error:
            raise StageFailed(f"DATA={given}: {error}") from None
        print(f"    using {path}")
        return path
    path = settings.dataset
    if path.exists():
        print(f"    reusing {path}")
    else:
        runner.python("generate", "-m", "pipelines.generate", "--output", str(path))
    return path


def train_latest(runner: Runner, settings: Settings) -> list[int]:
    windows = [m.window for m in read_manifests(settings.windows_dir)]
    latest = windows[-3:]
    runner.run(
        "train",
        "mlflow", "run", ".", "-e", "train", "--env-manager", "local",
        "--experiment-name", settings.experiment_name,
        "-P", f"first-window={latest[0]}", "-P", f"windows={latest[-1]}",
    )  # fmt: skip
    return latest


def server_pid() -> int | None:
    try:
        pid = int(SERVER_PID.read_text())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    return pid


def serve(port: int, poll_interval: float = 5, ready: str = "/ready") -> bool:
    """Start the server unless the demo's server already runs; True when started now. It is
    waited for until `ready` answers (`/health` when no model may be registered yet)."""
    if server_pid():
        print("    server already running: asking every worker to reload the moved aliases")
        request = urllib.request.Request(f"http://127.0.0.1:{port}/admin/reload", method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            workers = json.load(response)["workers"]
        print(f"    reloaded by {workers['reloaded']} workers; still pending: {workers['pending']}")
        return False
    SERVER_LOG.parent.mkdir(parents=True, exist_ok=True)
    with SERVER_LOG.open("ab") as log:
        server = subprocess.Popen(
            # Poll often: the demo's next run moves the aliases and wants them picked up at once.
            [
                sys.executable,
                "-m",
                "serving",
                "--port",
                str(port),
                "--poll-interval",
                str(poll_interval),
            ],  # fmt: skip
            cwd=PROJECT_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    SERVER_PID.write_text(str(server.pid))
    try:
        _wait_until_ready(server, port, ready)
    except BaseException:  # Ctrl-C or never ready: no server is left behind untracked
        stop_server()
        raise
    print(f"    server ready at http://127.0.0.1:{port} (pid {server.pid}; log: {SERVER_LOG})")
    return True


def _wait_until_ready(server: subprocess.Popen, port: int, ready: str) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{ready}", timeout=2).read()
            return
        except OSError:
            if server.poll() is not None:
                raise StageFailed(_server_failure("the server exited")) from None
            time.sleep(0.5)
    raise StageFailed(_server_failure("the server was not ready in 90 s"))


def _server_failure(what: str) -> str:
    return f"--- last lines of {SERVER_LOG} ---\n{tail_file(SERVER_LOG, 40)}\nerror: {what}"


def ask(port: int) -> None:
    """The seed's example request to each endpoint, as its README shows it."""
    for alias in ("model1", "model2", "model3"):
        version, answer = _predict(port, alias)
        print(f"    POST /predict_cluster_{alias} (version {version}) -> {answer}")


def _predict(port: int, alias: str) -> tuple[str, str]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/predict_cluster_{alias}",
        data=json.dumps(EXAMPLE_RECORD).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.headers.get("X-Model-Version", "?"), response.read().decode()


def stop() -> None:
    """Stop the demo's server, a live demo's stream service and producer, and the broker if the
    demo started it; nothing else."""
    from infra.demo_live import stop_leftovers  # it imports this module

    stop_leftovers()
    stop_server()
    stop_broker()


def stop_server(quiet: bool = False) -> None:
    pid = server_pid()
    if pid:
        os.killpg(pid, signal.SIGTERM)
        if not quiet:
            print(f"stopped the server (pid {pid})")
    SERVER_PID.unlink(missing_ok=True)


def stop_broker(quiet: bool = False) -> None:
    """The broker, if a demo started it (`BROKER_MARK`)."""
    if BROKER_MARK.exists():
        subprocess.run(
            [sys.executable, "-m", "infra.kafka_broker", "down"],
            cwd=PROJECT_ROOT,
            capture_output=quiet,
        )
        BROKER_MARK.unlink()


def broker(runner: Runner) -> None:
    runner.python("broker", "-m", "infra.kafka_broker", "up")
    if running_cluster(DEFAULT_STATE_DIR) is None:  # a broker started elsewhere answered
        BROKER_MARK.unlink(missing_ok=True)


def demo(port: int, verbose: bool) -> None:
    settings = Settings.from_env()
    runner = Runner(verbose)
    started_broker = settings.kafka_is_local and running_cluster(DEFAULT_STATE_DIR) is None
    started_server = False
    if started_broker:  # marked first, so a Ctrl-C while it starts still stops it
        BROKER_MARK.parent.mkdir(exist_ok=True)
        BROKER_MARK.touch()
    no_progress = () if verbose else ("--no-progress",)
    try:
        stage("Kafka broker", lambda: broker(runner))
        path = stage("dataset", lambda: dataset(runner, settings))
        stage(
            f"replay {path.name} into Kafka",
            lambda: runner.python(
                "produce", "-m", "pipelines.produce", "--input", str(path), *no_progress
            ),
        )
        stage(
            "cut the stream into 3 windows",
            lambda: runner.python(
                "consume",
                "-m",
                "pipelines.consume",
                "--windows",
                str(DEFAULT_WINDOWS),
                *no_progress,
            ),
        )
        latest = stage(
            "train and register (mlflow run . -e train)", lambda: train_latest(runner, settings)
        )
        started_server = stage("serve the registered models", lambda: serve(port))
        stage("ask each model about the seed's customer", lambda: ask(port))
    except KeyboardInterrupt:
        print("\ninterrupted: stopping what this run started")
        if started_server:  # a server an earlier run started keeps running
            stop_server()
        if started_broker:
            stop_broker()
        raise SystemExit(130) from None
    except StageFailed as failure:
        print(
            f"{failure}\nThe demo stopped there; `make stop` stops what it started.",
            file=sys.stderr,
        )
        raise SystemExit(1) from None
    print(
        f"\nWindows {latest[0]}-{latest[-1]} are versions behind aliases model1..model3.\n"
        f"Every stage's whole output:        {LOG_DIR.relative_to(PROJECT_ROOT)}/\n"
        "Compare the runs in the MLflow UI:  make ui   (then open http://127.0.0.1:5001)\n"
        "Run the demo again:                make demo  (adds three versions, moves the aliases)\n"
        "Stop everything the demo started:  make stop"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", nargs="?", choices=("run", "stop"), default="run")
    parser.add_argument("--port", type=int, default=ServingSettings.from_env().port)
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show every stage's whole output"
    )
    parser.add_argument(
        "--live",
        action="store_true",
        help="the stream as it flows: the stream service trains each window as the producer's "
        "replay closes it, until Ctrl-C (make demo-live)",
    )
    parser.add_argument(
        "--speedup",
        type=float,
        help=f"with --live: replay the dataset X times faster than it happened (default "
        f"{DEFAULT_SPEEDUP:,.0f}: a month of invoices in about 26 s)",
    )
    args = parser.parse_args(argv)
    if args.speedup is not None and not (args.live and args.speedup > 0):
        parser.error(f"--speedup goes with --live and must be > 0, got {args.speedup}")
    if args.action == "stop":
        stop()
    elif args.live:
        from infra.demo_live import live  # it imports this module

        live(args.port, args.verbose, args.speedup or DEFAULT_SPEEDUP)
    else:
        demo(args.port, args.verbose)
    return 0


if __name__ == "__main__":
    sys.exit(main())
