"""Delivery to MLflow: metric rows buffered and sent in batches by a
background thread (through a helper process that makes the store calls, so
that their CPU time is not taken from the driver's), and every other write
described as plain data, so that what MLflow does not take (a tracking server
away) is kept in a spill file for `pbtflow sync`."""

from __future__ import annotations

import json
import logging
import os
import site
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

SPILL_FILE = "mlflow_undelivered.json"  # beside Tune's state, for `pbtflow sync`
BATCH_LIMIT = 250  # metric rows per log_batch call (Azure ML's MLflow cap)
MAX_FLUSH_WAIT = 30.0  # seconds between flushes of metric rows, at most
HELPER_AFTER_S = 1.0  # seconds of store calls in the driver after which a helper process makes them
HELPER_START_S = 60.0  # how long the rows wait for a helper still starting (at the end: not at all)


def batches(rows: list) -> Iterator[list]:
    """``rows`` in slices MLflow accepts in one ``log_batch`` call."""
    return (rows[start:start + BATCH_LIMIT] for start in range(0, len(rows), BATCH_LIMIT))


def plain_rows(pending: Mapping[str, list[Metric]]) -> dict[str, list[tuple]]:
    """Metric rows as (key, value, timestamp, step), for a pipe or a spill file."""
    return {run: [(m.key, m.value, m.timestamp, m.step) for m in rows] for run, rows in pending.items()}


class Writer:
    """Collects metric rows per run and sends them with ``log_batch`` from a
    background thread, at most every ``interval`` seconds; between flushes it
    waits (1 - busy) / busy times as long as the last flush took, up to
    ``MAX_FLUSH_WAIT``. A ``log_batch`` costs about 10 ms per call plus 0.15 ms
    per row on a SQLite store: with many runs, the flushes space out and each
    call carries more rows, so the per-call cost stays about ``busy`` of the
    time and the cost per result stays flat as the population grows (rows
    reach MLflow up to half a minute late at 128 members); the per-row cost
    remains, whatever the spacing. While the tracking server is away,
    rows (and run endings) are kept and sent once it answers; what is still
    unsent at the end is spilled to a file for `pbtflow sync`."""

    def __init__(self, client: MlflowClient, interval: float = 2.0, busy: float = 0.1,
                 helper_after: float | None = None) -> None:
        self._client = client
        self._interval = interval
        self._busy = busy
        self._wait = interval
        # The store calls move to a helper process once they have taken
        # ``helper_after`` seconds here (a large population): on the driver,
        # their CPU time (about 0.2 ms per row on SQLite) held the interpreter
        # the callbacks need, and every member waits on the driver for its next
        # step. A small population never pays the helper's start (about 2 s of
        # a core for Python and MLflow's imports); while it starts, rows wait.
        self._helper_after = helper_after
        self._store_seconds = 0.0
        self._helper: StoreHelper | None = None
        self._pending: dict[str, list[Metric]] = {}
        self._terminal: dict[str, str] = {}  # run id -> status, set after its rows are sent
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._stop = threading.Event()
        self._down = False
        self._thread = threading.Thread(target=self._loop, name="pbtflow-mlflow", daemon=True)
        self._thread.start()

    def add(self, run_id: str, metrics: list[Metric]) -> None:
        with self._lock:
            self._pending.setdefault(run_id, []).extend(metrics)

    def adopt(self, placeholder: str, run_id: str) -> None:
        """Rows kept under a placeholder, before the run could be created."""
        with self._lock:
            rows = self._pending.pop(placeholder, [])
            self._pending.setdefault(run_id, [])[:0] = rows

    def finishing(self) -> None:
        """The members have ended: no helper process is started for the last
        rows (its start would cost more than writing them here)."""
        self._helper_after = None

    def terminate(self, run_id: str, status: str) -> None:
        with self._lock:
            self._terminal[run_id] = status

    def flush(self) -> bool:
        """Send what is pending; True if everything was delivered."""
        with self._send_lock:
            with self._lock:
                pending, self._pending = self._pending, {}
                terminal = dict(self._terminal)
            try:
                sent, ended, failure = self._deliver(pending, terminal)
            except Exception as exc:  # noqa: BLE001 (nothing is lost: every row is kept)
                sent, ended, failure = {}, [], f"{type(exc).__name__}: {exc}"
            for run_id, rows in pending.items():
                if sent.get(run_id, 0) < len(rows):  # the server is away: keep the rows for later
                    with self._lock:
                        self._pending.setdefault(run_id, [])[:0] = rows[sent.get(run_id, 0):]
            with self._lock:
                for run_id in ended:
                    self._terminal.pop(run_id, None)
            if failure is not None and not self._down:
                log.warning("pbtflow: could not write to MLflow (%s); tuning goes on and the "
                            "metrics are kept until it answers.", failure)
            elif failure is None and self._down:
                log.warning("pbtflow: MLflow answers again; the kept metrics were delivered.")
            self._down = failure is not None
            return failure is None

    def _deliver(self, pending: Mapping[str, list[Metric]],
                 terminal: Mapping[str, str]) -> tuple[dict[str, int], list[str], str | None]:
        if self._helper_after is not None and self._store_seconds >= self._helper_after:
            self._helper_after = None  # started once
            self._helper = StoreHelper.start(self._client.tracking_uri)
        sent: dict[str, int] = {}
        ended: list[str] = []
        if self._helper is not None:
            try:
                if self._helper.ready():
                    return self._helper.deliver(pending, terminal)
                if self._stop.is_set():  # still starting at the end: the driver, idle now, is quicker
                    self._helper.close()
                    self._helper = None
                elif self._helper.starting_for() < HELPER_START_S:  # a few seconds: the rows wait
                    return {run_id: 0 for run_id in pending}, [], None
                else:
                    raise HelperLost(f"it did not start within {HELPER_START_S:.0f} s", {}, [])
            except (HelperLost, OSError, EOFError) as exc:  # the helper is gone: the driver writes
                log.warning("pbtflow: the MLflow writer process stopped (%s); the driver writes "
                            "the metrics itself from now on.", exc or type(exc).__name__)
                self._helper.close()
                self._helper = None
                if isinstance(exc, HelperLost):  # what it confirmed is not sent again
                    sent, ended = exc.sent, exc.ended
                    pending = {run_id: rows[sent.get(run_id, 0):] for run_id, rows in pending.items()}
                    terminal = {run_id: status for run_id, status in terminal.items() if run_id not in ended}
        start = time.perf_counter()
        more, more_ended, failure = deliver(self._client, pending, terminal)
        if failure is None:  # not the time spent waiting on a server away
            self._store_seconds += time.perf_counter() - start
        return ({run_id: sent.get(run_id, 0) + more.get(run_id, 0) for run_id in {**sent, **more}},
                ended + more_ended, failure)

    def close(self, spill_to: Path | None = None) -> Path | None:
        """Stop the thread and send the rest; if MLflow is still away, write it
        to ``spill_to`` and return that path."""
        self.finishing()
        self._stop.set()
        self._thread.join()
        delivered = self.flush()
        if self._helper is not None:
            self._helper.close()
            self._helper = None
        if delivered or spill_to is None:
            return None
        with self._lock:  # the spill file has them now: `pbtflow sync` sends them, once
            rows, self._pending = plain_rows(self._pending), {}
            terminal, self._terminal = dict(self._terminal), {}
        spill(spill_to, self._client.tracking_uri, rows, terminal)
        return spill_to

    def _loop(self) -> None:
        while not self._stop.wait(self._wait):
            start = time.perf_counter()
            self.flush()
            spent = time.perf_counter() - start
            self._wait = min(MAX_FLUSH_WAIT, max(self._interval, spent * (1 - self._busy) / self._busy))


def deliver(client: MlflowClient, pending: Mapping[str, list[Metric]], terminal: Mapping[str, str],
            done: Callable[[str, int], None] | None = None) -> tuple[dict[str, int], list[str], str | None]:
    """Send each run's rows, then the run endings, until MLflow refuses one
    call; returns the rows sent per run, the runs ended and the refusal.
    Rows kept under a placeholder (``unborn:``, no run yet) are not sent.
    ``done(run_id, rows)`` is told of each call MLflow took (rows 0: the
    run's ending)."""
    sent: dict[str, int] = {}
    failure = None
    for run_id, rows in pending.items():
        sent[run_id] = 0
        if failure is not None or run_id.startswith("unborn:"):
            continue
        for batch in batches(rows):
            try:
                client.log_batch(run_id, metrics=batch)
            except Exception as exc:  # noqa: BLE001 (the server is away: the caller keeps them)
                failure = str(exc) or type(exc).__name__
                break
            sent[run_id] += len(batch)
            if done is not None:
                done(run_id, len(batch))
    ended = []
    for run_id, status in terminal.items():
        if failure is not None:
            break
        try:
            client.set_terminated(run_id, status)
        except Exception as exc:  # noqa: BLE001
            failure = str(exc) or type(exc).__name__
            break
        ended.append(run_id)
        if done is not None:
            done(run_id, 0)
    return sent, ended, failure


class HelperLost(Exception):
    """The helper process ended; ``sent`` and ``ended`` are what it had
    confirmed of the request in flight."""

    def __init__(self, reason: str, sent: dict[str, int], ended: list[str]) -> None:
        super().__init__(reason)
        self.sent, self.ended = sent, ended


class StoreHelper:
    """A child process that makes the writer's store calls (``deliver``) for
    one tracking URI: rows go to it as plain tuples over a socket pair, and it
    confirms each call MLflow took, so that if it dies mid-request the driver
    re-sends only the rest. It inherits the driver's environment (credentials
    included; the URI itself goes over the socket, not the command line),
    runs in its own session (a Ctrl-C or a signal to the driver's group is the
    driver's to handle) and ends when the driver closes the connection or
    exits."""

    def __init__(self, process: subprocess.Popen, connection: Connection) -> None:
        self._process = process
        self._connection = connection
        self._started = time.monotonic()
        self._ready = False

    @classmethod
    def start(cls, tracking_uri: str) -> "StoreHelper | None":
        """The helper, or None (the writer's thread then calls the store) if
        it cannot start."""
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[1])
        if package_root not in set(site.getsitepackages()) | {site.getusersitepackages()}:
            # a checkout run as `python src/tune_ppo.py`: pbtflow is not installed
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        try:
            ours, theirs = socket.socketpair()
            try:
                process = subprocess.Popen(
                    [sys.executable, "-m", "pbtflow.delivery", str(theirs.fileno())],
                    pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env,
                    start_new_session=True)
            finally:
                theirs.close()
            connection = Connection(ours.detach())
            connection.send(tracking_uri)
        except (OSError, ValueError) as exc:  # ValueError: no pass_fds on this platform
            log.info("pbtflow: no MLflow writer process (%s); the driver writes the metrics.", exc)
            return None
        return cls(process, connection)

    def ready(self, timeout: float = 0.0) -> bool:
        """Whether the helper has imported MLflow and opened the store (it
        says so once); raises EOFError if it died before."""
        if not self._ready and self._connection.poll(timeout):
            self._ready = self._connection.recv() == "ready"
        return self._ready

    def starting_for(self) -> float:
        return time.monotonic() - self._started

    def deliver(self, pending: Mapping[str, list[Metric]],
                terminal: Mapping[str, str]) -> tuple[dict[str, int], list[str], str | None]:
        """``deliver`` in the helper; raises HelperLost with what it confirmed
        if it ends before the outcome."""
        sent: dict[str, int] = {}
        ended: list[str] = []
        try:
            self._connection.send((plain_rows(pending), dict(terminal)))
            while True:
                message = self._connection.recv()
                if message[0] == "done":
                    return message[1]
                _, run_id, rows = message
                if rows:
                    sent[run_id] = sent.get(run_id, 0) + rows
                else:
                    ended.append(run_id)
        except (OSError, EOFError) as exc:
            raise HelperLost(str(exc) or type(exc).__name__, sent, ended) from None

    def close(self) -> None:
        """Let it finish and end; one still starting has nothing to finish and is killed."""
        if not self._ready:
            self._process.kill()
        try:
            self._connection.send(None)
        except OSError:
            pass
        self._connection.close()
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def _serve(fd: int) -> None:
    """The helper's side: deliver each request until the driver stops."""
    connection = Connection(fd)
    try:
        tracking_uri = connection.recv()
    except (EOFError, OSError):
        return
    client = MlflowClient(tracking_uri)
    try:
        client.search_experiments(max_results=1)  # the store opened before the first rows
    except Exception:  # noqa: BLE001,S110 (deliver reports what the store refuses)
        pass
    connection.send("ready")
    while True:
        try:
            request = connection.recv()
        except (EOFError, OSError):
            return
        if request is None:
            return
        rows, terminal = request
        outcome = deliver(client, {run: [Metric(*row) for row in items] for run, items in rows.items()},
                          terminal, lambda run_id, count: connection.send(("took", run_id, count)))
        connection.send(("done", outcome))


def spill(path: Path, tracking_uri: str, rows: Mapping[str, list], terminal: Mapping[str, str],
          deliveries: list[dict[str, Any]] = ()) -> None:
    """Add undelivered metric rows, run endings and other writes (artifacts,
    tags, params; see :func:`send`) to ``path`` (JSON)."""
    data = json.loads(path.read_text()) if path.exists() else {"tracking_uri": tracking_uri,
                                                                 "rows": {}, "terminal": {}}
    for run_id, items in rows.items():
        data["rows"].setdefault(run_id, []).extend(items)
    data["terminal"].update(terminal)
    data.setdefault("deliveries", []).extend(deliveries)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def send(client: MlflowClient, delivery: Mapping[str, Any]) -> None:
    """One write to MLflow, described as plain data so that it can be spilled
    and sent later: a JSON artifact, a file or folder, a tag, or params and
    metrics."""
    run_id, kind = delivery["run_id"], delivery["kind"]
    if kind == "json":
        client.log_dict(run_id, delivery["data"], delivery["path"])
    elif kind == "file":
        client.log_artifact(run_id, delivery["local"], delivery.get("folder"))
    elif kind == "dir":
        client.log_artifacts(run_id, delivery["local"], delivery.get("folder"))
    elif kind == "tag":
        client.set_tag(run_id, delivery["key"], delivery["value"])
    elif kind == "batch":
        client.log_batch(run_id, metrics=[Metric(*m) for m in delivery.get("metrics", [])],
                         params=[Param(k, v) for k, v in delivery.get("params", [])])
    else:
        raise ValueError(f"delivery kind {kind!r} is not json, file, dir, tag or batch")


def send_or_spill(client: MlflowClient, delivery: Mapping[str, Any], spill_to: Path | None) -> bool:
    """Send ``delivery``; if MLflow does not take it, keep it in ``spill_to``
    for `pbtflow sync` (or raise without one). True if it was sent."""
    try:
        send(client, delivery)
        return True
    except Exception as exc:
        if spill_to is None:
            raise
        spill(spill_to, client.tracking_uri, {}, {}, [dict(delivery)])
        log.warning("pbtflow: MLflow did not take %s of run %s (%s); it is kept in %s for "
                    "pbtflow sync.", delivery.get("path") or delivery.get("key") or delivery["kind"],
                    delivery["run_id"], exc, spill_to)
        return False


if __name__ == "__main__":  # the writer's helper process (StoreHelper)
    _serve(int(sys.argv[1]))
