"""The reference experiments (the PBT paper's and Ray's toy problems) on a real
2-CPU Ray runtime and a real MLflow store: the seeded claims with margins, the no-PBT
baselines logged as their own parent runs, and the pictures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from mlflow.tracking import MlflowClient

import pbtflow
from pbtflow import names
from pbtflow.trainables import lr_schedule, quadratic
from mlflow_checks import assert_record_is_true, runs_by_role

Q_REACHED = 1.19  # the claim's threshold (the optimum is 1.2)


def _column(results, key: str) -> list[np.ndarray]:
    return [r.metrics_dataframe[key].to_numpy() for r in results]


def _parents(workdir, name: str) -> dict[str, object]:
    """Parent runs of an MLflow experiment by kind: 'pbt', 'grid', 'random'."""
    parents, _ = runs_by_role(MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}"), name)
    return {p.data.tags.get(names.BASELINE, "pbt"): p for p in parents}


def test_quadratic_pbt_reaches_the_optimum_and_the_grid_does_not(ray_runtime, workdir):
    pbt = pbtflow.tune(pbtflow.Experiment(trainable="quadratic", seed=0, experiment_name="quadratic"))
    grid = pbtflow.tune(pbtflow.Experiment(trainable="quadratic", seed=0, experiment_name="quadratic",
                                           baseline="grid"))
    assert pbt.num_errors == 0 and grid.num_errors == 0
    for results in (pbt, grid):  # the same budget and starting points
        assert sorted((r.metrics_dataframe["h0"].iloc[0], r.metrics_dataframe["h1"].iloc[0])
                      for r in results) == [(0.0, 1.0), (1.0, 0.0)]
        assert all(len(q) == 100 for q in _column(results, names.Q))
    best_pbt = [q.max() for q in _column(pbt, names.Q)]
    best_grid = [q.max() for q in _column(grid, names.Q)]
    assert min(best_pbt) >= Q_REACHED, best_pbt  # both members, within 100 steps
    assert max(best_grid) < Q_REACHED - 0.5, best_grid  # one coordinate never moves: Q <= 0.6

    parents = _parents(workdir, "quadratic")
    assert set(parents) == {"pbt", "grid"}
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    assert assert_record_is_true(client, parents["pbt"].info.run_id, pbt)["exploits"] >= 10
    assert assert_record_is_true(client, parents["grid"].info.run_id, grid)["exploits"] == 0
    own = {"quadratic_paths.png", "quadratic_q.png", "quadratic_paths.gif", "hp_schedule.png",
           "hp_schedule.json"}
    for kind, results, pictures in (("pbt", pbt, own | {"lineage.png", "lineage_arrows.json"}),
                                    ("grid", grid, own)):
        logged = {Path(f.path).name for f in client.list_artifacts(parents[kind].info.run_id, "plots")}
        assert logged == pictures, logged
        assert {p.name for p in (Path(results.experiment_path) / "plots").iterdir()} == pictures


def test_lr_schedule_pbt_reaches_done_and_a_fixed_lr_does_not(ray_runtime, workdir):
    """Population 8, every member starting at lr 1e-4; a long run with
    hundreds of exploits and pbtflow's checkpoint retention: no trial may die
    of a deleted donor checkpoint (see test_retention.py for the contrast)."""
    # Stop the population at the first member done (the claim), not the last.
    pbt = pbtflow.tune(pbtflow.Experiment(trainable="lr-schedule", seed=0, experiment_name="lr",
                                          stop_return=lr_schedule.TARGET))
    assert pbt.num_errors == 0
    assert all(r.metrics_dataframe["cur_lr"].iloc[0] == 1e-4 for r in pbt)
    done_at = [r.metrics_dataframe.loc[r.metrics_dataframe[names.MEAN_ACCURACY] > lr_schedule.TARGET,
                                       names.TRAINING_ITERATION].min() for r in pbt]
    reached = [s for s in done_at if s == s]  # not NaN
    assert reached and min(reached) <= 700, done_at  # the budget is 1000 steps

    grid = pbtflow.tune(pbtflow.Experiment(trainable="lr-schedule", seed=0, experiment_name="lr",
                                           baseline="grid"))
    assert grid.num_errors == 0
    assert all(set(r.metrics_dataframe["cur_lr"]) == {1e-4} for r in grid)
    assert all(len(r.metrics_dataframe) == 1000 for r in grid)  # the whole budget
    best = max(a.max() for a in _column(grid, names.MEAN_ACCURACY))
    assert best < lr_schedule.TARGET * 0.75, best  # noise alone: far from done

    parents = _parents(workdir, "lr")
    assert set(parents) == {"pbt", "grid"}
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    assert assert_record_is_true(client, parents["pbt"].info.run_id, pbt)["exploits"] >= 8


def test_random_baseline_samples_starting_values_from_the_mutation_domains():
    from pbtflow.baselines import baseline_spec
    from pbtflow.trainables import build

    spec = build(pbtflow.Experiment(trainable="quadratic", baseline="random"))
    random = baseline_spec(spec, "random")
    assert random.points_to_evaluate is None
    assert {k: type(v).__name__ for k, v in random.param_space.items()} == {
        "lr": "Float", "h0": "Float", "h1": "Float"}
    assert baseline_spec(spec, "grid").points_to_evaluate == quadratic.STARTING_POINTS


def test_toy_rules_match_the_design():
    # lr-schedule: the triangle, and the three cases of a step.
    assert lr_schedule.optimal_lr(0) == 0.001 and lr_schedule.optimal_lr(100) == 0.01
    assert lr_schedule.optimal_lr(150) == 0.005 and lr_schedule.optimal_lr(250) == 0.001
    assert lr_schedule.step(50.0, 0.005, 0.6, 0.0)[0] == 50.6  # q = 1: a += U / q
    assert lr_schedule.step(50.0, 0.05, 0.5, 0.0)[0] == 50.0 - (10 - 3) * 0.5  # lr too high
    assert lr_schedule.step(50.0, 1e-4, 0.9, 0.0)[0] == 50.0  # lr too low: noise only
    assert lr_schedule.step(1.0, 1e-4, 0.9, -5.0)[0] == 0.0  # never below 0
    # quadratic: Q, Qhat and the scaled gradient step.
    theta = np.array([0.9, 0.9])
    assert np.isclose(quadratic.q_true(theta), 1.2 - (0.75 * 0.81 + 0.81))
    assert np.isclose(quadratic.q_hat(theta, np.array([1.0, 0.0])), 1.2 - 0.81)
    assert np.allclose(quadratic.ascend(theta, np.array([1.0, 1.0]), 0.1),
                       [0.9 - 0.1 * 2 * 0.9 * 0.75, 0.9 - 0.1 * 2 * 0.9])
