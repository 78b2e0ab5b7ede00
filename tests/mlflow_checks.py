"""Assertions on what a pbtflow run left in MLflow, shared by several tests."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import pytest
from conftest import user_env
from mlflow.tracking import MlflowClient

from pbtflow import names
from pbtflow.lineage import read_ray_log, trial_index
from pbtflow.pbt import get_path


class CountingClient(MlflowClient):
    """A real client that notes the run of each ``log_batch`` call made with it
    (in this process: a helper process has its own client)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[str] = []

    def log_batch(self, run_id, *args, **kwargs):
        self.calls.append(run_id)
        return super().log_batch(run_id, *args, **kwargs)


def runs_by_role(client: MlflowClient, experiment_name: str) -> tuple[list, list]:
    exp = client.get_experiment_by_name(experiment_name)
    assert exp is not None, f"no MLflow experiment {experiment_name!r}"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get(names.ROLE) == "parent"]
    children = [r for r in runs if r.data.tags.get(names.ROLE) == "trial"]
    return parents, children


def assert_nested_runs(client: MlflowClient, experiment_name: str, results, metric: str):
    """One FINISHED parent; one FINISHED child per trial, linked to it, whose
    metric history has one row per reported result at steps 0, 1, 2, ..."""
    parents, children = runs_by_role(client, experiment_name)
    parents = [p for p in parents if names.REPLAY_OF not in p.data.tags]
    assert len(parents) == 1, [p.info.run_id for p in parents]
    parent = parents[0]
    children = [c for c in children if c.data.tags[names.PARENT_RUN_ID] == parent.info.run_id]
    assert parent.info.status == "FINISHED"
    assert len(children) == len(results)
    trial_ids = {r.metrics["trial_id"] for r in results}
    assert {c.data.tags[names.TRIAL_ID] for c in children} == trial_ids
    rows_per_trial = {r.metrics["trial_id"]: len(r.metrics_dataframe) for r in results}
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags[names.PARENT_RUN_ID] == parent.info.run_id
        history = client.get_metric_history(child.info.run_id, metric)
        steps = [m.step for m in history]
        assert steps == list(range(len(steps))), steps  # monotonic, never logged twice
        assert len(steps) == rows_per_trial[child.data.tags[names.TRIAL_ID]]
        assert len(client.get_metric_history(child.info.run_id, names.HP_PREFIX + "lr")) == len(steps)
    assert parent.data.tags[names.BEST_TRIAL] in trial_ids
    assert names.BEST_PREFIX + metric in parent.data.metrics
    return parent, children


def _artifact_json(client: MlflowClient, run_id: str, path: str, tmp: str):
    return json.loads(Path(client.download_artifacts(run_id, path, tmp)).read_text())


def assert_record_is_true(client: MlflowClient, parent_run_id: str, results) -> dict:
    """The MLflow record of a finished PBT run, read back with a fresh client,
    against Ray's own PBT log (pbt_global.txt) and Tune's per-trial results:
    the run's own record check says 'complete'; every child has pbt_events.json
    with Ray's exploits, donors and new configs; every mutated hyperparameter is
    an hp/ metric at every step, starting at the param and switching to Ray's
    new config the step after each exploit; the pictures' data equal the hp/
    rows and lineage.json. Returns some counts for the caller."""
    parent = client.get_run(parent_run_id)
    assert parent.data.tags.get(names.RECORD_CHECK) == "complete", parent.data.tags.get(names.RECORD_CHECK)
    if parent.data.tags.get(names.ROLE) == "parent":  # opened by pbtflow: named as Ray's folder
        assert parent.info.run_name == Path(results.experiment_path).name
    mutated = parent.data.params["mutated_hyperparameters"].split(",")
    ray_log = read_ray_log(results.experiment_path)
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.`{names.PARENT_RUN_ID}` = '{parent_run_id}'")
    # A trial stopped right after an exploit reports its donor's last metrics
    # (the checkpoint it was to restore): its own id is in its own rows.
    rows = {str(r.metrics_dataframe["trial_id"].iloc[-1]): len(r.metrics_dataframe) for r in results}
    assert {c.data.tags[names.TRIAL_ID] for c in children} == set(rows), (
        sorted(c.data.tags[names.TRIAL_ID] for c in children), sorted(rows))
    by_index = {trial_index(tid): tid for tid in rows}
    with tempfile.TemporaryDirectory() as tmp:
        lineage = _artifact_json(client, parent_run_id, "lineage.json", tmp)
        series = _artifact_json(client, parent_run_id, "plots/hp_schedule.json", tmp)
        arrows = (_artifact_json(client, parent_run_id, "plots/lineage_arrows.json", tmp)
                  if ray_log else [])
        histories = {}
        for child in children:
            tid = child.data.tags[names.TRIAL_ID]
            events = _artifact_json(client, child.info.run_id, "pbt_events.json", tmp)
            mine = [e for e in ray_log if by_index[e["target"]] == tid]
            assert [e["donor_id"] for e in events] == [by_index[e["donor"]] for e in mine], tid
            assert len(lineage[tid]["exploits"]) == len(mine)
            n = rows[tid]
            for key in mutated:
                history = sorted((m.step, m.value)
                                 for m in client.get_metric_history(child.info.run_id, "hp/" + key))
                assert [s for s, _ in history] == list(range(n)), (tid, key)
                assert history[0][1] == pytest.approx(float(child.data.params[key])), (tid, key)
                for event, entry in zip(events, mine):
                    after = event["member_step"] + 1
                    if after < n:
                        assert history[after][1] == pytest.approx(float(get_path(entry["config"], key))), \
                            (tid, key, after)
                histories[(key, tid)] = history
    # The pictures draw the record: every mutated hyperparameter a panel with
    # each member's hp/ rows, and one arrow per exploit of lineage.json.
    assert set(series) == set(mutated)
    for key, per_member in series.items():
        assert set(per_member) == set(rows)
        for tid, (steps, values) in per_member.items():
            assert steps == [s for s, _ in histories[(key, tid)]]
            assert values == pytest.approx([v for _, v in histories[(key, tid)]])
    assert sorted(map(tuple, arrows)) == sorted(
        (e["donor"], tid, e["member_step"]) for tid, entry in lineage.items() for e in entry["exploits"])
    assert sorted((d, c) for d, c, _ in arrows) == sorted(
        (by_index[e["donor"]], by_index[e["target"]]) for e in ray_log)
    return {"exploits": len(ray_log), "members": len(rows)}


def assert_policy_plays_as_evaluated(tracking_uri: str, parent_run_id: str, env_id: str,
                                     registered: str | None = None) -> dict:
    """The parent run's one logged model is the best member's policy: loaded
    in a fresh process with mlflow.pyfunc.load_model (from the registry when
    ``registered`` names it), it gives the same actions for a batch of
    observations as row by row and after extreme observations, without
    importing pbtflow, and its greedy returns on
    10 fresh episodes agree with the best member's evaluation within the
    sampling error of both means."""
    client = MlflowClient(tracking_uri)
    parent = client.get_run(parent_run_id)
    (output,) = parent.outputs.model_outputs
    model = client.get_logged_model(output.model_id)
    assert (model.name, model.source_run_id) == (names.POLICY_MODEL, parent_run_id)
    uri = f"models:/{model.model_id}"
    if registered:
        (version,) = client.search_model_versions(f"name='{registered}'")
        assert version.source == uri and version.run_id == parent_run_id
        uri = f"models:/{registered}/{version.version}"
    best = parent.data.tags[names.BEST_TRIAL]
    (child,) = [c for c in client.search_runs([parent.info.experiment_id],
                                              f"tags.`{names.TRIAL_ID}` = '{best}'")
                if c.data.tags.get(names.PARENT_RUN_ID) == parent_run_id]
    env = user_env({"MLFLOW_TRACKING_URI": tracking_uri})
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("play_policy.py")), uri, env_id,
                           "7000", "10"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    played = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not played["pbtflow_imported"]  # the model needs RLlib, not pbtflow
    # The same actions (up to float rounding of a batched matrix product),
    # also after extreme observations (the observation filter is frozen).
    np.testing.assert_allclose(played["actions"], played["again"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(played["actions"], played["rows"], rtol=1e-5, atol=1e-6)
    metrics = child.data.metrics
    mean, std, n = (metrics[names.EVAL_RETURN_MEAN], metrics[names.EVAL_RETURN_STD],
                    metrics[names.EVAL_EPISODES])
    returns = np.array(played["returns"])
    error = np.sqrt(std ** 2 / n + returns.var(ddof=1) / len(returns))
    assert abs(returns.mean() - mean) <= 4 * error + 0.05 * abs(mean), (played["returns"], mean, std)
    return played
