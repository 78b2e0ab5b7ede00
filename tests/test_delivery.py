"""Delivery while MLflow is away, in-process and in about a second: the
writer keeps what the tracking server did not take, spills it to a file at the
end, and `pbtflow sync` delivers it to a store read back with a fresh client
(the end-to-end version, with a real server stopped mid-run, is in
test_faults.py)."""

from __future__ import annotations

import json
import socket

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from pbtflow import delivery, names, runs


def _dead_uri() -> str:
    """An HTTP tracking URI nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_what_mlflow_did_not_take_is_spilled_and_synced_once(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(store)
    experiment_id = client.create_experiment("away")
    parent = client.create_run(experiment_id, tags={names.ROLE: "parent"}).info.run_id
    child = client.create_run(experiment_id, tags={names.ROLE: "trial",
                                                   names.PARENT_RUN_ID: parent}).info.run_id

    away = MlflowClient(_dead_uri())
    writer = delivery.Writer(away, interval=3600)  # flushed by hand below
    rows = [Metric("score", float(step) / 7, 1_700_000_000_000 + step, step) for step in range(600)]
    writer.add(child, rows[:300])
    assert writer.flush() is False  # the server is away: nothing lost, nothing sent
    writer.add(child, rows[300:])
    writer.terminate(child, "FINISHED")
    spill_file = tmp_path / "exp" / delivery.SPILL_FILE
    assert writer.close(spill_to=spill_file) == spill_file
    assert delivery.send_or_spill(away, {"run_id": parent, "kind": "tag", "key": "k",
                                         "value": "v"}, spill_file) is False

    data = json.loads(spill_file.read_text())
    assert [r[3] for r in data["rows"][child]] == list(range(600))  # in order, each once
    assert data["terminal"] == {child: "FINISHED"}
    data["tracking_uri"] = store  # the server came back as this store
    spill_file.write_text(json.dumps(data))

    assert runs.sync(spill_file) == (600, 1)
    assert not spill_file.exists()
    fresh = MlflowClient(store)
    history = fresh.get_metric_history(child, "score")
    assert sorted((m.step, m.value, m.timestamp) for m in history) == \
        [(m.step, m.value, m.timestamp) for m in rows]
    assert fresh.get_run(child).info.status == "FINISHED"
    assert fresh.get_run(parent).data.tags["k"] == "v"
    # The driver that spilled is gone: its parent run does not stay RUNNING.
    assert fresh.get_run(parent).info.status != "RUNNING"
