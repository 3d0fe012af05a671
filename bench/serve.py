"""Serving latency and throughput, side by side, on one registered model version.

    python -m bench.serve [--synthetic] [--alias model1] [--duration 5] [--only this,gunicorn]

Four servers answer the same request for the version that `--alias` points at, one at a time so
they never share the 2 cores:

- this project: `python -m serving` (granian, 2 workers, serving.gateway, JVM-free predictor);
- the previous setup of this project: the same Flask app under gunicorn, 2 gthread workers of 4
  threads, SO_REUSEPORT, keep-alive 5 s (gunicorn is a dev dependency for this comparison only);
- `mlflow models serve -m models:/<name>@<alias> --env-manager local` (uvicorn, Spark pyfunc);
- the seed's approach: Flask with a Spark `transform` per request (bench/seed_server.py).

One script of ~500 lines: it starts, measures and stops four servers with the same client and
prints one table; a reader follows one run of it top to bottom.

For each: cold start (process start to first 200 from its readiness URL), single-row latency
p50/p99 and requests/s at 1, 8, 32 and 256 concurrent keep-alive connections (`wrk`, one thread,
over 127.0.0.1), the latency of one 10,000-row batch (Python `requests`, keep-alive, median of
several), and the half-open test: 1,000 connections that sent a request line and one header and
then nothing, held open while one normal request is timed (10 s at most). The load generator runs
on the same 2 cores as the server. Since requests/s depend on whatever else the machine runs, the
CPU time the server's processes spend per request (read from /proc) is reported too, with the
requests/s it implies for 2 otherwise idle cores.

`--synthetic` first trains a small generated dataset into a temporary store with the training job
(needs Spark); otherwise the store of MLFLOW_TRACKING_URI is used, as `pipelines.train` leaves it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests

from infra.ports import free_port
from pipelines.config import PROJECT_ROOT, Settings
from pipelines.contract import EXAMPLE_RECORD
from pipelines.data.schema import FEATURES

SYNTHETIC_ROWS = 20_000  # --synthetic: a few hundred customers, enough for three real versions

SEED_BODY = json.dumps(EXAMPLE_RECORD).encode()  # the seed's request, from the feature contract
Rows = list[tuple[int, float, int]]
CONCURRENCY = (1, 8, 32, 256)
HALF_OPEN = 1000  # connections held by the half-open test
HALF_OPEN_WAIT = 10.0  # seconds the normal request may take
GOALS = {
    "p50_ms": 0.6,
    "speedup_vs_mlflow": 100.0,
    "rps_clients": 32,
    "rps": 6000.0,
    "batch_ms": 25.0,
    "ready_s": 3.0,
}


@dataclass
class Server:
    """How to start one contender and talk to it."""

    name: str
    command: list[str]
    ready_path: str
    predict_path: str
    single_body: bytes
    batch_body: Callable[[Rows], bytes]
    batch_reps: int
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Result:
    name: str
    ready_s: float = float("nan")
    ready_cpu_s: float = float("nan")  # CPU seconds its processes used to get there
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    rps: dict[int, float] = field(default_factory=dict)
    errors: int = 0
    batch_ms: float = float("nan")
    # CPU seconds the server's processes (and wrk) spent per request at 32 clients: unlike
    # requests/s, this hardly depends on what else the machine is running.
    server_cpu_us: float = float("nan")
    wrk_cpu_us: float = float("nan")
    # Seconds one normal request took with HALF_OPEN half-open connections held; nan: no answer.
    half_open_s: float = float("nan")

    @property
    def half_open_ms(self) -> float:
        return self.half_open_s * 1000

    @property
    def capacity(self) -> float:
        """Requests/s that 2 otherwise idle cores would sustain, server and wrk included."""
        return 2e6 / (self.server_cpu_us + self.wrk_cpu_us)


def start(server: Server, timeout: float) -> tuple[subprocess.Popen, str, float]:
    """Start the server; return it, its base URL and seconds until its readiness URL said 200."""
    port = free_port()
    command = [part.replace("{port}", str(port)) for part in server.command]
    begin = time.perf_counter()
    process = subprocess.Popen(
        command,
        env=os.environ | server.env,
        cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    while time.perf_counter() - begin < timeout:
        try:
            if requests.get(url + server.ready_path, timeout=1).status_code == 200:
                return process, url, time.perf_counter() - begin
        except requests.RequestException:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {process.returncode}")
        time.sleep(0.01)
    stop(process)
    raise RuntimeError(f"{server.name} not ready within {timeout}s")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group (uvicorn and Spark start children), then wait."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def cpu_seconds(root: int) -> float:
    """User + system CPU time of process `root` and all its descendants, from /proc."""
    stats: dict[int, tuple[int, float]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(stat.parent.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += stats.get(pid, (0, 0))[1]
        todo.extend(child for child, (parent, _) in stats.items() if parent == pid)
    return total / os.sysconf("SC_CLK_TCK")


def wrk(url: str, body: bytes, connections: int, duration: float) -> tuple[dict, int]:
    """Run wrk with a POST body; return its latency percentiles (ms), requests/s, requests, wrk's
    CPU seconds, and errors."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            'wrk.method = "POST"\n'
            f"wrk.body = {json.dumps(body.decode())}\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        out = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", "-s", script.name]
            + ["--timeout", "10s", url],
            capture_output=True,
            text=True,
            timeout=duration + 60,
            check=True,
        ).stdout
    finally:
        os.unlink(script.name)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    percentiles = {
        p: _ms(value, unit)
        for p, value, unit in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    }
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    errors = int(bad.group(1)) if bad else 0
    if socket_errors:
        errors += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1)))
    requests_done = int(re.search(r"(\d+) requests in", out).group(1))
    stats = {"p50": percentiles["50"], "p99": percentiles["99"], "rps": rps}
    return stats | {"requests": requests_done, "wrk_cpu": wrk_cpu}, errors


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def batch_latency_ms(url: str, body: bytes, reps: int) -> float:
    """Median wall time of POSTing one batch body on a keep-alive session (one warm-up first)."""
    headers = {"Content-Type": "application/json"}
    times = []
    with requests.Session() as session:
        for i in range(reps + 1):
            begin = time.perf_counter()
            response = session.post(url, data=body, headers=headers, timeout=120)
            elapsed = time.perf_counter() - begin
            response.raise_for_status()
            if i:
                times.append(elapsed * 1000)
    return statistics.median(times)


def measure(server: Server, duration: float, batch: Rows) -> Result:
    result = Result(server.name)
    print(f"\n== {server.name}", flush=True)
    process, url, result.ready_s = start(server, timeout=180)
    result.ready_cpu_s = cpu_seconds(process.pid)
    print(f"ready after {result.ready_s:.2f} s ({result.ready_cpu_s:.2f} s of CPU)", flush=True)
    try:
        target = url + server.predict_path
        for _ in range(20):  # warm-up: JIT, Spark's first job, connection pools
            requests.post(
                target, data=server.single_body, headers={"Content-Type": "application/json"}
            )
        for connections in CONCURRENCY:
            cpu_before = cpu_seconds(process.pid)
            stats, errors = wrk(target, server.single_body, connections, duration)
            server_cpu = cpu_seconds(process.pid) - cpu_before
            result.errors += errors
            result.rps[connections] = stats["rps"]
            if connections == GOALS["rps_clients"] and stats["requests"]:
                result.server_cpu_us = server_cpu / stats["requests"] * 1e6
                result.wrk_cpu_us = stats["wrk_cpu"] / stats["requests"] * 1e6
            if connections == 1:
                result.p50_ms, result.p99_ms = stats["p50"], stats["p99"]
            print(f"{connections:>2} clients: {stats} server_cpu={server_cpu:.2f}s", flush=True)
        try:
            result.batch_ms = batch_latency_ms(target, server.batch_body(batch), server.batch_reps)
            print(f"10,000-row batch: {result.batch_ms:.1f} ms", flush=True)
        except requests.RequestException as exc:  # e.g. no answer in 120 s on a busy machine
            print(f"10,000-row batch: failed ({type(exc).__name__})", flush=True)
        result.half_open_s = half_open(url, server.predict_path, server.single_body)
        answered = (
            f"answered in {result.half_open_s * 1000:.0f} ms"
            if result.half_open_s == result.half_open_s
            else f"no answer within {HALF_OPEN_WAIT:g} s"
        )
        print(f"one request with {HALF_OPEN:,} half-open connections held: {answered}", flush=True)
    finally:
        stop(process)
    return result


def half_open(url: str, path: str, body: bytes) -> float:
    """Hold HALF_OPEN connections that sent a request line and one header, then time one normal
    request on a new connection: its seconds, or nan without an answer in HALF_OPEN_WAIT."""
    host, port = url.removeprefix("http://").split(":")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, HALF_OPEN + 1024)), hard))
    held: list[socket.socket] = []
    try:
        for _ in range(HALF_OPEN):
            sock = socket.create_connection((host, int(port)), timeout=HALF_OPEN_WAIT)
            sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\n".encode())
            held.append(sock)
        begin = time.perf_counter()
        try:
            response = requests.post(
                url + path,
                data=body,
                headers={"Content-Type": "application/json", "Connection": "close"},
                timeout=HALF_OPEN_WAIT,
            )
        except requests.RequestException:
            return float("nan")
        elapsed = time.perf_counter() - begin
        return elapsed if response.ok else float("nan")
    except OSError:  # could not even open the connections
        return float("nan")
    finally:
        for sock in held:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def records(rows: Rows) -> bytes:
    """A batch as this project's API takes it: a JSON array of records."""
    return json.dumps([dict(zip(FEATURES, row, strict=True)) for row in rows]).encode()


def split(rows: Rows) -> bytes:
    """A batch as MLflow's scoring server takes it (`dataframe_split`; the quantities and counts
    stay integers, as the training signature declares them long)."""
    return json.dumps({"dataframe_split": {"columns": list(FEATURES), "data": rows}}).encode()


def contenders(model_name: str, alias: str, only: set[str], scratch: Path) -> list[Server]:
    python = sys.executable
    venv_path = {"PATH": f"{Path(python).parent}{os.pathsep}{os.environ['PATH']}"}
    single_split = split([tuple(EXAMPLE_RECORD.values())])
    # Logging as deployed: stderr (discarded here) and the rotating file.
    ours = {"SERVING_ALIASES": alias, "SERVING_LOG_FILE": str(scratch / "serving.log")}
    gunicorn_metrics = scratch / "gunicorn-metrics"
    gunicorn_metrics.mkdir()
    servers = [
        Server(
            name="this server (python -m serving)",
            command=[python, "-m", "serving", "--port", "{port}", "--workers", "2"],
            ready_path="/ready",
            predict_path=f"/predict_cluster_{alias}",
            single_body=SEED_BODY,
            batch_body=records,
            batch_reps=20,
            env=ours,
        ),
        Server(
            # The setup `python -m serving` had before granian, as its gunicorn_conf set it.
            name="gunicorn (previous setup)",
            command=[python, "-m", "gunicorn", "--bind", "127.0.0.1:{port}"]
            + ["--workers", "2", "--worker-class", "gthread", "--threads", "4"]
            + ["--reuse-port", "--keep-alive", "5", "--timeout", "30", "--graceful-timeout", "10"]
            + ["--no-control-socket", "serving.app:create_app()"],
            ready_path="/ready",
            predict_path=f"/predict_cluster_{alias}",
            single_body=SEED_BODY,
            batch_body=records,
            batch_reps=20,
            env=ours
            | {
                "PROMETHEUS_MULTIPROC_DIR": str(gunicorn_metrics),
                "SERVING_LOG_FILE": str(scratch / "gunicorn.log"),
            },
        ),
        Server(
            name="mlflow models serve",
            command=[
                python,
                "-m",
                "mlflow",
                "models",
                "serve",
                "-m",
                f"models:/{model_name}@{alias}",
            ]
            + ["--env-manager", "local", "-h", "127.0.0.1", "-p", "{port}"],
            ready_path="/ping",
            predict_path="/invocations",
            single_body=single_split,
            batch_body=split,
            batch_reps=3,
            env=venv_path,
        ),
        Server(
            name="seed approach (Flask + Spark transform)",
            command=[python, "-m", "bench.seed_server", "--port", "{port}", "--alias", alias],
            ready_path="/health",
            predict_path="/predict",
            single_body=SEED_BODY,
            batch_body=records,
            batch_reps=3,
        ),
    ]
    return [s for s in servers if s.name.split()[0] in only]


def table(results: list[Result]) -> str:
    ours = results[0]

    def ratio(theirs: float, mine: float) -> str:
        if not mine or np.isnan(theirs) or np.isnan(mine):
            return "-"
        return f"{theirs / mine:,.{1 if theirs / mine < 10 else 0}f}x"

    rows = [
        ("cold start to ready (s)", "ready_s", "{:.2f}", True),
        ("CPU used to get ready (s)", "ready_cpu_s", "{:.2f}", True),
        ("single row p50 (ms)", "p50_ms", "{:.2f}", True),
        ("single row p99 (ms)", "p99_ms", "{:.2f}", True),
        *[(f"requests/s, {c} client(s)", c, "{:,.0f}", False) for c in CONCURRENCY],
        ("10,000-row batch (ms)", "batch_ms", "{:.1f}", True),
        ("server CPU per request, 32 clients (us)", "server_cpu_us", "{:,.0f}", True),
        ("requests/s on 2 idle cores (from CPU)", "capacity", "{:,.0f}", False),
        (f"one request, {HALF_OPEN:,} half-open held (ms)", "half_open_ms", "{:,.0f}", True),
    ]
    header = "| | " + " | ".join(r.name for r in results) + " |"
    lines = [header, "|---" * (len(results) + 1) + "|"]
    for label, key, fmt, lower_is_better in rows:
        cells = []
        for r in results:
            value = r.rps.get(key, float("nan")) if isinstance(key, int) else getattr(r, key)
            mine = ours.rps.get(key) if isinstance(key, int) else getattr(ours, key)
            cell = fmt.format(value) if value == value else "no answer"
            if r is not ours and value == value:
                cell += f" ({ratio(value, mine) if lower_is_better else ratio(mine, value)})"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("| failed requests | " + " | ".join(str(r.errors) for r in results) + " |")
    return "\n".join(lines)


def goals(results: list[Result]) -> str:
    ours = results[0]
    clients = GOALS["rps_clients"]
    checks = [
        (f"p50 <= {GOALS['p50_ms']} ms", ours.p50_ms <= GOALS["p50_ms"], f"{ours.p50_ms:.2f} ms"),
        (
            f"requests/s at {clients} clients >= {GOALS['rps']:,.0f}, measured",
            ours.rps.get(clients, 0) >= GOALS["rps"],
            f"{ours.rps.get(clients, 0):,.0f}",
        ),
        (
            f"requests/s >= {GOALS['rps']:,.0f}, from CPU per request on 2 idle cores",
            ours.capacity >= GOALS["rps"],
            f"{ours.capacity:,.0f}",
        ),
        (
            f"one request answered with {HALF_OPEN:,} half-open connections held",
            ours.half_open_s < HALF_OPEN_WAIT,
            f"{ours.half_open_ms:,.0f} ms" if ours.half_open_s == ours.half_open_s else "none",
        ),
        (
            f"10,000-row batch <= {GOALS['batch_ms']} ms",
            ours.batch_ms <= GOALS["batch_ms"],
            f"{ours.batch_ms:.1f} ms",
        ),
        (
            f"ready <= {GOALS['ready_s']} s",
            ours.ready_s <= GOALS["ready_s"],
            f"{ours.ready_s:.2f} s",
        ),
    ]
    mlflow_serve = next((r for r in results if r.name.startswith("mlflow")), None)
    if mlflow_serve:
        speedup = mlflow_serve.p50_ms / ours.p50_ms
        checks.append(
            (
                f">= {GOALS['speedup_vs_mlflow']:.0f}x lower p50 than mlflow models serve",
                speedup >= GOALS["speedup_vs_mlflow"],
                f"{speedup:,.0f}x",
            )
        )
    lines = [f"- {'met' if ok else 'MISSED'}: {goal} ({value})" for goal, ok, value in checks]
    for other in results[1:]:
        lines.append(
            f"- vs {other.name}: p50 {other.p50_ms / ours.p50_ms:,.1f}x lower, requests/s at "
            + ", ".join(
                f"{c}: {ours.rps[c] / other.rps[c]:,.1f}x" for c in CONCURRENCY if other.rps.get(c)
            )
        )
    return "\n".join(lines)


def synthetic_store(root: Path) -> str:
    """A temporary store filled by the training job itself: a small generated dataset cut into
    windows as the consumer would, trained and registered as versions 1..3 (aliases model1..3)."""
    from dataclasses import replace

    from pipelines.config import sqlite_tracking_uri
    from pipelines.data.generator import generate_dataset
    from pipelines.ingest.window_files import write_windows
    from pipelines.train import train_windows

    uri = sqlite_tracking_uri(root / "store")
    write_windows(generate_dataset(SYNTHETIC_ROWS, seed=1)[0], root / "windows")
    settings = replace(Settings.from_env(), mlflow_tracking_uri=uri, spark_master="local[2]")
    train_windows(root / "windows", settings=settings)
    return uri


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--alias", default="model1")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--synthetic", action="store_true", help="register a model in a temp store")
    parser.add_argument(
        "--only",
        default="this,gunicorn,mlflow,seed",
        help="comma-separated subset: this,gunicorn,mlflow,seed",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed as the load generator: apt-get install wrk")

    load_at_start = os.getloadavg()[0]
    scratch = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    try:
        if args.synthetic:
            os.environ["MLFLOW_TRACKING_URI"] = synthetic_store(scratch)
        settings = Settings.from_env()
        print(f"store {settings.mlflow_tracking_uri}, model {settings.model_name}@{args.alias}")
        rng = np.random.default_rng(0)
        batch = [
            (int(q), round(float(a), 2), int(n))
            for q, a, n in zip(
                rng.integers(1, 5000, 10_000),
                rng.random(10_000) * 1e5,
                rng.integers(1, 60, 10_000),
                strict=True,
            )
        ]
        servers = contenders(settings.model_name, args.alias, set(args.only.split(",")), scratch)
        results = [measure(server, args.duration, batch) for server in servers]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(
        f"\n{os.cpu_count()} cores, load average {load_at_start:.1f} at the start and "
        f"{os.getloadavg()[0]:.1f} at the end (1 minute); wrk: 1 thread on the same cores; "
        f"{args.duration:g} s per run\n"
    )
    print(table(results))
    print()
    print(goals(results))


if __name__ == "__main__":
    main()
