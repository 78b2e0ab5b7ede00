"""Real services for the tests: a 2-CPU local Ray runtime, MLflow stores in
temporary folders, and a real `mlflow server` process over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENTRY = REPO / "src" / "tune_ppo.py"


@pytest.fixture(scope="session", autouse=True)
def outside_the_checkout(tmp_path_factory):
    """Every test runs in a temporary folder: MLflow puts the artifacts of a
    SQLite store in ./mlruns of the working folder, wherever the database is."""
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(previous)


@pytest.fixture(scope="session")
def ray_runtime():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run in a fresh folder so the embedded MLflow store and results land there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    return tmp_path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(root: Path, port: int | None = None) -> tuple[subprocess.Popen, str]:
    port = port or free_port()
    root.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2):
                return proc, uri
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("mlflow server did not answer within 90 s")


def stop_mlflow_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    proc, uri = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"))
    yield uri
    stop_mlflow_server(proc)


def user_env(extra: dict | None = None) -> dict:
    """This process's environment without its MLFLOW_ settings (so that only
    what a test passes reaches MLflow), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(extra or {})
    return env


def start_entry(*args: str, cwd: Path, env: dict | None = None, script: Path = ENTRY) -> subprocess.Popen:
    """Start the real entry script (or a user's ``script``) as a user would,
    in its own session, so that it and the Ray it starts can be ended
    together (``finish``)."""
    return subprocess.Popen([sys.executable, str(script), *args], cwd=cwd, env=user_env(env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def wait_for_rows(folder: Path, rows: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Wait until the SQLite store ``folder/mlflow.db`` holds ``rows``
    training_iteration values (read with sqlite3, not MLflow), while ``proc``
    runs; else kill it and fail."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        try:
            with sqlite3.connect(folder / "mlflow.db") as db:
                n = db.execute("select count(*) from metrics where key='training_iteration'").fetchone()[0]
            if n >= rows:
                return
        except sqlite3.Error:
            pass
        time.sleep(1)
    kill_group(proc)
    raise AssertionError("the run logged too few results in time")


def kill_group(proc: subprocess.Popen) -> None:
    """Kill a process from ``start_entry`` with the Ray it started (its process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # nothing of it is left
        pass
    proc.wait()


def finish(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """Wait for ``proc`` (from ``start_entry``) and return its output; if it
    is still running at ``timeout``, ``kill_group`` it and raise
    ``TimeoutExpired`` with what it had printed."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate(timeout=30)
        raise subprocess.TimeoutExpired(proc.args, timeout, out, err) from None
    finally:
        if proc.poll() is None:  # the wait itself failed
            kill_group(proc)


def run_entry(*args: str, cwd: Path, env: dict | None = None, timeout: float = 600):
    """Run the real entry script as a user would; killed with its Ray at ``timeout``."""
    proc = start_entry(*args, cwd=cwd, env=env)
    out, err = finish(proc, timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
