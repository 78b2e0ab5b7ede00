"""Delivery to MLflow: metric rows buffered and sent in batches by a
background thread, and every other write described as plain data, so that what
MLflow does not take (a tracking server away) is kept in a spill file for
`pbtflow sync`."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

SPILL_FILE = "mlflow_undelivered.json"  # beside Tune's state, for `pbtflow sync`
BATCH_LIMIT = 250  # metric rows per log_batch call (Azure ML's MLflow cap)


def batches(rows: list) -> Iterator[list]:
    """``rows`` in slices MLflow accepts in one ``log_batch`` call."""
    return (rows[start:start + BATCH_LIMIT] for start in range(0, len(rows), BATCH_LIMIT))
MAX_FLUSH_WAIT = 30.0  # seconds between flushes of metric rows, at most


class Writer:
    """Collects metric rows per run and sends them with ``log_batch`` from a
    background thread, at most every ``interval`` seconds, and busy at most
    ``busy`` of the time (between flushes it waits (1 - busy) / busy times as
    long as the last flush took, up to ``MAX_FLUSH_WAIT``). A ``log_batch``
    costs about 10 ms per call plus 0.15 ms per row on a SQLite store: with
    many runs, the flushes space out and each call carries more rows, so the
    cost per result stays flat as the population grows (rows reach MLflow up
    to half a minute late at 128 members). While the tracking server is away,
    rows (and run endings) are kept and sent once it answers; what is still
    unsent at the end is spilled to a file for `pbtflow sync`."""

    def __init__(self, client: MlflowClient, interval: float = 2.0, busy: float = 0.1) -> None:
        self._client = client
        self._interval = interval
        self._busy = busy
        self._wait = interval
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

    def terminate(self, run_id: str, status: str) -> None:
        with self._lock:
            self._terminal[run_id] = status

    def flush(self) -> bool:
        """Send what is pending; True if everything was delivered."""
        with self._send_lock:
            with self._lock:
                pending, self._pending = self._pending, {}
                terminal = dict(self._terminal)
            failure = None
            for run_id, rows in pending.items():
                sent = 0
                if failure is None and not run_id.startswith("unborn:"):
                    for batch in batches(rows):
                        try:
                            self._client.log_batch(run_id, metrics=batch)
                            sent += len(batch)
                        except Exception as exc:  # the server is away: keep the rows for later
                            failure = exc
                            break
                if sent < len(rows):
                    with self._lock:
                        self._pending.setdefault(run_id, [])[:0] = rows[sent:]
            for run_id, status in terminal.items():
                if failure is not None:
                    break
                try:
                    self._client.set_terminated(run_id, status)
                    with self._lock:
                        self._terminal.pop(run_id, None)
                except Exception as exc:
                    failure = exc
            if failure is not None and not self._down:
                log.warning("pbtflow: could not write to MLflow (%s); tuning goes on and the "
                            "metrics are kept until it answers.", failure)
            elif failure is None and self._down:
                log.warning("pbtflow: MLflow answers again; the kept metrics were delivered.")
            self._down = failure is not None
            return failure is None

    def close(self, spill_to: Path | None = None) -> Path | None:
        """Stop the thread and send the rest; if MLflow is still away, write it
        to ``spill_to`` and return that path."""
        self._stop.set()
        self._thread.join()
        if self.flush() or spill_to is None:
            return None
        with self._lock:
            rows = {run: [[m.key, m.value, m.timestamp, m.step] for m in ms]
                    for run, ms in self._pending.items()}
            terminal = dict(self._terminal)
        spill(spill_to, self._client.tracking_uri, rows, terminal)
        return spill_to

    def _loop(self) -> None:
        while not self._stop.wait(self._wait):
            start = time.perf_counter()
            self.flush()
            spent = time.perf_counter() - start
            self._wait = min(MAX_FLUSH_WAIT, max(self._interval, spent * (1 - self._busy) / self._busy))


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
