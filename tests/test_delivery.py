"""Delivery while MLflow is away, in-process and in about a second: the
writer keeps what the tracking server did not take, spills it to a file at the
end, and `pbtflow sync` delivers it to a store read back with a fresh client
(the end-to-end version, with a real server stopped mid-run, is in
test_faults.py)."""

from __future__ import annotations

import json
import socket

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from pbtflow import delivery, names, runs
from mlflow_checks import CountingClient


def _writer(client: MlflowClient, helper: bool) -> delivery.Writer:
    """A writer flushed by hand; with ``helper``, its helper process started
    (by a first flush, with nothing to send) and ready."""
    writer = delivery.Writer(client, interval=3600, helper_after=0.0 if helper else None)
    if helper:
        assert writer.flush()
        assert writer._helper is not None and writer._helper.ready(timeout=60)
    return writer


def _three_runs(tmp_path, name: str) -> tuple[str, CountingClient, list[str]]:
    """A SQLite store with three runs, and a client counting the driver's store calls."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = CountingClient(uri)
    experiment_id = client.create_experiment(name)
    return uri, client, [client.create_run(experiment_id).info.run_id for _ in range(3)]


def _scores(k: int, count: int) -> list[Metric]:
    return [Metric("score", float(i + k), 1_700_000_000_000, i) for i in range(count)]


def _assert_scores_once(uri: str, runs: list[str], count: int) -> None:
    """Read back with a fresh client: each run's scores, every step once, in order."""
    fresh = MlflowClient(uri)
    for k, run in enumerate(runs):
        assert [m.value for m in sorted(fresh.get_metric_history(run, "score"), key=lambda m: m.step)] \
            == [float(i + k) for i in range(count)]


def _dead_uri() -> str:
    """An HTTP tracking URI nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("helper", [False, True], ids=["driver-writes", "helper-process"])
def test_what_mlflow_did_not_take_is_spilled_and_synced_once(tmp_path, monkeypatch, helper):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(store)
    experiment_id = client.create_experiment("away")
    parent = client.create_run(experiment_id, tags={names.ROLE: "parent"}).info.run_id
    child = client.create_run(experiment_id, tags={names.ROLE: "trial",
                                                   names.PARENT_RUN_ID: parent}).info.run_id

    away = MlflowClient(_dead_uri())
    writer = _writer(away, helper)
    rows = [Metric("score", float(step) / 7, 1_700_000_000_000 + step, step) for step in range(600)]
    writer.add(child, rows[:300])
    assert writer.flush() is False  # the server is away: nothing lost, nothing sent
    writer.add(child, rows[300:])
    writer.terminate(child, "FINISHED")
    spill_file = tmp_path / "exp" / delivery.SPILL_FILE
    assert writer.close(spill_to=spill_file) == spill_file
    assert delivery.send_or_spill(away, {"run_id": parent, "kind": "tag", "key": "k",
                                         "value": "v"}, spill_file) is False
    # The spill file has them now: a flush after MLflow came back (the run
    # ending's) sends nothing, so `pbtflow sync` sends each row once.
    writer._client = back = CountingClient(store)
    assert writer.flush() and back.calls == []

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


def test_the_helper_process_writes_and_a_lost_helper_loses_nothing(tmp_path, caplog):
    """The writer's store calls go through its helper process; if the helper
    dies mid-run, the driver writes from then on and every row arrives once."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = CountingClient(uri)  # the driver's store calls
    experiment_id = client.create_experiment("helper")
    runs = [client.create_run(experiment_id).info.run_id for _ in range(3)]
    writer = _writer(client, helper=True)
    rows = {run: [Metric("score", float(i + k), 1_700_000_000_000 + i, i) for i in range(400)]
            for k, run in enumerate(runs)}
    for run in runs:
        writer.add(run, rows[run][:200])
    assert writer.flush()
    # The helper wrote these: the driver made no store call.
    assert client.calls == []
    assert len(MlflowClient(uri).get_metric_history(runs[0], "score")) == 200
    writer._helper._process.kill()
    writer._helper._process.wait()
    for run in runs:
        writer.add(run, rows[run][200:])
    writer.terminate(runs[2], "FAILED")
    assert writer.flush()
    assert writer._helper is None and "writer process stopped" in caplog.text
    assert len(client.calls) == len(runs)  # the driver wrote the rest itself
    writer.close()
    fresh = MlflowClient(uri)
    for run in runs:
        history = fresh.get_metric_history(run, "score")
        assert sorted((m.step, m.value) for m in history) == [(m.step, m.value) for m in rows[run]]
    assert fresh.get_run(runs[2]).info.status == "FAILED"


def test_a_small_population_never_starts_the_helper(tmp_path):
    """The helper starts only once the store calls have taken HELPER_AFTER_S
    in the driver: a few flushes of a small population stay in the driver."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("small")).info.run_id
    writer = delivery.Writer(client, interval=3600, helper_after=delivery.HELPER_AFTER_S)
    for step in range(5):
        writer.add(run, [Metric("score", float(step), 1_700_000_000_000, step)])
        assert writer.flush()
    assert writer._helper is None and 0 < writer._store_seconds < delivery.HELPER_AFTER_S
    writer.close()
    assert len(MlflowClient(uri).get_metric_history(run, "score")) == 5


def test_rows_a_lost_helper_confirmed_are_not_sent_again(tmp_path):
    """The helper confirms each call MLflow took; if it is lost mid-request,
    the driver sends only the rest (a store that keeps duplicates, such as
    MLflow's file store or Azure ML, would otherwise show rows twice). A
    stand-in for the helper writes the first run's rows to the real store,
    confirms them and is lost."""

    class LostAfterOneRun:
        closed = False

        def __init__(self, client):
            self.client = client

        def ready(self, timeout=0.0):
            return True

        def starting_for(self):
            return 0.0

        def deliver(self, pending, terminal):
            run_id, rows = next(iter(pending.items()))
            self.client.log_batch(run_id, metrics=rows)
            raise delivery.HelperLost("killed", {run_id: len(rows)}, [])

        def close(self):
            LostAfterOneRun.closed = True

    uri, client, runs = _three_runs(tmp_path, "lost")
    writer = delivery.Writer(client, interval=3600)
    writer._helper = LostAfterOneRun(MlflowClient(uri))
    for k, run in enumerate(runs):
        writer.add(run, _scores(k, 50))
    writer.terminate(runs[0], "FINISHED")
    assert writer.flush()
    assert LostAfterOneRun.closed and writer._helper is None
    assert client.calls == runs[1:]  # the first run's rows were not sent again
    writer.close()
    _assert_scores_once(uri, runs, 50)
    assert MlflowClient(uri).get_run(runs[0]).info.status == "FINISHED"


def test_rows_wait_for_a_starting_helper_but_not_at_the_end(tmp_path, caplog):
    """While the helper starts (Python and MLflow's imports, a few seconds),
    a flush keeps the rows for it; at the end the driver, idle then, writes
    them itself at once and the helper, which holds none, is ended. Waiting
    for it there cost 1.4 s of a 128-member run's end here."""

    class StillStarting:
        closed = False
        waits: list = []

        def ready(self, timeout=0.0):
            StillStarting.waits.append(timeout)
            return False

        def starting_for(self):
            return 0.0

        def close(self):
            StillStarting.closed = True

    uri, client, runs = _three_runs(tmp_path, "starting")
    writer = delivery.Writer(client, interval=3600)
    writer._helper = StillStarting()
    for k, run in enumerate(runs):
        writer.add(run, _scores(k, 20))
    writer.terminate(runs[1], "FINISHED")
    assert writer.flush()
    assert client.calls == [] and not StillStarting.closed  # the rows wait for the helper
    assert writer.close() is None
    assert StillStarting.closed and writer._helper is None
    assert StillStarting.waits and set(StillStarting.waits) == {0.0}  # never waited on
    assert "writer process stopped" not in caplog.text  # not a loss: nothing to warn about
    assert client.calls == runs  # one log_batch per run, by the driver
    _assert_scores_once(uri, runs, 20)
    assert MlflowClient(uri).get_run(runs[1]).info.status == "FINISHED"


def test_no_helper_is_started_for_the_last_rows(tmp_path):
    """Once the members have ended (the tracker's on_experiment_end), the
    store calls stay in the driver even past HELPER_AFTER_S: a helper started
    then would only cost its start (Python and MLflow's imports) and be ended
    before it took a row."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = CountingClient(uri)
    run = client.create_run(client.create_experiment("last")).info.run_id
    writer = delivery.Writer(client, interval=3600, helper_after=0.0)  # a helper at the next flush
    writer.finishing()
    writer.add(run, [Metric("score", float(step), 1_700_000_000_000, step) for step in range(30)])
    assert writer.flush()
    assert writer._helper is None and client.calls == [run]
    writer.close()
    assert len(MlflowClient(uri).get_metric_history(run, "score")) == 30
