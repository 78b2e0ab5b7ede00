"""Assertions on what a pbtflow run left in MLflow, shared by several tests."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from pbtflow import names


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
