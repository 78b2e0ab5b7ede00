"""Class trainables (``package.module:Class``, a ``tune.Trainable`` subclass):
Ray's own class example and one written the plain Ray way, under pbtflow's PBT
on a real 2-CPU Ray runtime, with the same MLflow record as function
trainables. A class with ``reset_config`` keeps one worker per member however
many exploits happen; one without it restarts a worker at every exploit, and
pbtflow says so once."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import pbtflow
from pbtflow import cluster, trainables
from pbtflow.experiment import ExperimentError
from mlflow_checks import assert_record_is_true, runs_by_role

RAY_EXAMPLE = "ray.tune.examples.pbt_example:PBTBenchmarkExample"


def _workers(results) -> set[int]:
    """The worker processes that reported, from Tune's own result rows."""
    return {int(pid) for r in results for pid in r.metrics_dataframe["pid"]}


def test_rays_class_example_keeps_one_worker_per_member(ray_runtime, workdir):
    experiment = pbtflow.Experiment(
        trainable=RAY_EXAMPLE, metric="mean_accuracy", population=2, stop_iters=30,
        perturbation_interval=5, synch=True, quantile_fraction=0.5, seed=0, experiment_name="cls",
        initial={"lr": 0.0001, "some_other_factor": 1},
        mutations={"lr": {"uniform": [0.0001, 0.02]}, "some_other_factor": [1, 2]})
    results = pbtflow.tune(experiment)
    assert results.num_errors == 0 and len(results) == 2
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    parents, children = runs_by_role(client, "cls")
    exploits = assert_record_is_true(client, parents[0].info.run_id, results)["exploits"]
    assert exploits >= 3  # synchronous PBT with 2 members exploits at every interval
    assert len(_workers(results)) <= 2, "reset_config: Tune reuses the members' workers"
    assert parents[0].data.params["trainable"] == RAY_EXAMPLE and len(children) == 2
    assert all("hp/lr" in c.data.metrics for c in children)


def test_a_class_without_reset_config_restarts_its_worker_and_says_why(ray_runtime, workdir, caplog):
    experiment = pbtflow.Experiment(
        trainable="user_trainables:Climber", metric="height", population=2, stop_iters=12,
        perturbation_interval=3, synch=True, quantile_fraction=0.5, seed=0, experiment_name="cls2",
        initial={"lr": 0.05, "momentum": 0.5},
        mutations={"lr": {"uniform": [0.001, 0.1]}, "momentum": [0.0, 0.5, 0.9]})
    with caplog.at_level(logging.INFO, logger="pbtflow"):
        results = pbtflow.tune(experiment)
    assert results.num_errors == 0
    said = [r.getMessage() for r in caplog.records if "does not implement reset_config" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("pbtflow: user_trainables:Climber does not "), said
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    parents, _ = runs_by_role(client, "cls2")
    exploits = assert_record_is_true(client, parents[0].info.run_id, results)["exploits"]
    assert exploits >= 2
    assert len(_workers(results)) > 2, "every exploit starts a new worker"
    for result in results:  # a restored worker continues from the donor's height
        heights = result.metrics_dataframe["height"].to_numpy()
        assert (heights[1:] > heights[:-1]).all()


def test_a_class_that_is_not_a_trainable_fails_before_ray(monkeypatch, workdir):
    monkeypatch.setattr(cluster, "init_ray", lambda *_: pytest.fail("reached Ray"))
    with pytest.raises(ExperimentError) as error:
        trainables.build(pbtflow.Experiment(trainable="user_trainables:NotATrainable",
                                            metric="height", mutations={"lr": [0.1, 0.2]}))
    assert str(error.value).startswith("trainable: 'user_trainables:NotATrainable' must name a "
                                       "function taking the config dict or a tune.Trainable subclass")


def test_the_member_that_reaches_the_target_ends_with_a_checkpoint_of_that_iteration(ray_runtime, workdir):
    """The population stop saves the reaching member's weights as they reached
    the target, so that its evaluation and the delivered policy are of them,
    not of an older checkpoint: Tune's stop of every member saves none, and the
    last periodic checkpoint here is at iteration 5 while the target (0.5, at
    0.075 a step) is reached at 6 or 7. The checkpoint file is read directly."""
    experiment = pbtflow.Experiment(
        trainable="user_trainables:FileClimber", metric="height", population=2, stop_iters=40,
        stop_return=0.5, perturbation_interval=5, quantile_fraction=0.5, seed=0,
        experiment_name="reach", initial={"lr": 0.05, "momentum": 0.5},
        mutations={"lr": {"uniform": [0.04, 0.06]}, "momentum": [0.5]})
    results = pbtflow.tune(experiment)
    assert results.num_errors == 0
    # The reaching member is the one Tune stopped on its own result (done);
    # the stop of the population leaves the others' last results as they were.
    ended = [r for r in results if r.metrics.get("done")]
    assert len(ended) == 1, [r.metrics for r in results]
    first = ended[0]
    assert first.metrics["height"] >= 0.5
    saved = json.loads((Path(first.checkpoint.path) / "height.json").read_text())
    assert saved == {"height": first.metrics["height"],
                     "iteration": first.metrics["training_iteration"]}, saved
    assert first.metrics["training_iteration"] % 5 != 0  # not a periodic checkpoint
    assert all(r.metrics["training_iteration"] < 40 for r in results)  # the population stop
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    parents, _ = runs_by_role(client, "reach")
    assert parents[0].info.status == "FINISHED"
    assert_record_is_true(client, parents[0].info.run_id, results)
