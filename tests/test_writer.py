"""The MLflow writer's store calls grow with the runs that have new rows, not
with rows x runs: one ``log_batch`` per run per flush (more only past MLflow's
250 rows per call), on a real SQLite store read back with a fresh client."""

from __future__ import annotations

import time

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from pbtflow.delivery import BATCH_LIMIT, MAX_FLUSH_WAIT, Writer
from mlflow_checks import CountingClient


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
        client.calls.clear()
        assert writer.flush()
        assert len(client.calls) == len(runs)
        writer.add(runs[0], [Metric("big", float(i), now, i) for i in range(BATCH_LIMIT + 1)])
        client.calls.clear()
        assert writer.flush()
        assert len(client.calls) == 2  # past MLflow's rows per call
    finally:
        writer.close()
    fresh = MlflowClient(uri)
    for run in runs:
        history = fresh.get_metric_history(run, "m3")
        assert [m.step for m in history] == list(range(steps))
        assert [m.value for m in history] == [float(s + 3) for s in range(steps)]
    assert len(fresh.get_metric_history(runs[0], "big")) == BATCH_LIMIT + 1


def test_flushes_space_out_when_a_flush_is_slow(tmp_path):
    """Between flushes the writer's thread waits nine times as long as the last
    flush took (at least its interval, at most MAX_FLUSH_WAIT): with rows
    arriving all the time for 16 runs on SQLite (a flush takes far longer than
    the 0.01 s interval), each wait follows the flush before it, and every row
    still arrives once."""

    class TimedWriter(Writer):
        spans: list = []

        def flush(self):
            start = time.perf_counter()
            try:
                return super().flush()
            finally:
                TimedWriter.spans.append((start, time.perf_counter()))

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("writer")
    runs = [client.create_run(experiment).info.run_id for _ in range(16)]
    writer = TimedWriter(client, interval=0.01)
    start, step = time.perf_counter(), 0
    while len(TimedWriter.spans) < 3 and time.perf_counter() - start < 60:
        now = int(time.time() * 1000)
        for run in runs:
            writer.add(run, [Metric("m", float(step), now, step)])
        step += 1
        time.sleep(0.02)
    elapsed = time.perf_counter() - start
    writer.close()  # waits for the thread's flush under way; then flushes once more itself
    spans = TimedWriter.spans[:-1]
    assert len(spans) >= 3
    for (start, end), (following, _) in zip(spans, spans[1:]):
        due = min(MAX_FLUSH_WAIT, max(0.01, 9 * (end - start)))
        assert following - end >= 0.95 * due, (end - start, following - end)
    assert len(spans) < elapsed / 0.01 / 10  # an interval-paced writer would flush every 0.01 s
    fresh = MlflowClient(uri)
    assert len(fresh.get_metric_history(runs[-1], "m")) == step
