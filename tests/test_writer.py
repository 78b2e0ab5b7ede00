"""The MLflow writer's store calls grow with the runs that have new rows, not
with rows x runs: one ``log_batch`` per run per flush (more only past MLflow's
250 rows per call), on a real SQLite store read back with a fresh client."""

from __future__ import annotations

import time

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from pbtflow.delivery import BATCH_LIMIT, MAX_FLUSH_WAIT, Writer


class CountingClient(MlflowClient):
    """A real client that counts its log_batch calls."""

    calls = 0

    def log_batch(self, run_id, metrics=(), *args, **kwargs):
        CountingClient.calls += 1
        return super().log_batch(run_id, metrics=metrics, *args, **kwargs)


def test_one_store_call_per_run_per_flush_however_many_rows(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = CountingClient(uri)
    experiment = client.create_experiment("writer")
    runs = [client.create_run(experiment).info.run_id for _ in range(24)]
    writer = Writer(client, interval=3600)  # flushed by hand here
    try:
        now = int(time.time() * 1000)
        steps = 30  # 30 results of 7 rows per run before a flush: 210 rows, one call each
        for step in range(steps):
            for run in runs:
                writer.add(run, [Metric(f"m{k}", float(step + k), now, step) for k in range(7)])
        CountingClient.calls = 0
        assert writer.flush()
        assert CountingClient.calls == len(runs)
        writer.add(runs[0], [Metric("big", float(i), now, i) for i in range(BATCH_LIMIT + 1)])
        CountingClient.calls = 0
        assert writer.flush()
        assert CountingClient.calls == 2  # past MLflow's rows per call
    finally:
        writer.close()
    fresh = MlflowClient(uri)
    for run in runs:
        history = fresh.get_metric_history(run, "m3")
        assert [m.step for m in history] == list(range(steps))
        assert [m.value for m in history] == [float(s + 3) for s in range(steps)]
    assert len(fresh.get_metric_history(runs[0], "big")) == BATCH_LIMIT + 1


def test_flushes_space_out_when_a_flush_is_slow(tmp_path):
    """Between flushes the writer waits nine times as long as the last one took
    (busy at most 10%), within [interval, MAX_FLUSH_WAIT]."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("writer")
    runs = [client.create_run(experiment).info.run_id for _ in range(16)]
    writer = Writer(client, interval=0.01)
    try:
        now = int(time.time() * 1000)
        for run in runs:
            writer.add(run, [Metric("m", 1.0, now, 0)])
        deadline = time.time() + 60
        while writer._wait == 0.01 and time.time() < deadline:  # the first flush has not ended
            time.sleep(0.01)
        # 16 SQLite transactions take well over 0.01 / 9 s
        assert 0.01 < writer._wait <= MAX_FLUSH_WAIT
    finally:
        writer.close()
