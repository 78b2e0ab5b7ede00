"""PBT-safe checkpoint retention, on a real Ray runtime: a metric that gets
worse every step makes Tune's score-based retention delete a donor's newest
checkpoint as soon as the donor moves on, while the exploiting member still
waits for a CPU (4 members on 2 CPUs take turns, synchronous PBT). Plain Ray Tune loses trials
to "Could not recover from checkpoint as it does not exist on storage
anymore"; pbtflow, on the same trainable and schedule, loses none and keeps
the disk bounded."""

from __future__ import annotations

from pathlib import Path

from ray import tune
from ray.tune.schedulers import PopulationBasedTraining

import pbtflow
import user_trainables
from pbtflow.tuning import KEEP_CHECKPOINTS

MEMBERS, INTERVAL = 4, 2
GONE = "does not exist on storage anymore"


def test_plain_ray_score_based_retention_loses_exploited_checkpoints(ray_runtime, tmp_path):
    """The hazard is real in this setting (so the next test means something).
    Member 0 is the best and member 3 the worst: after the first exploit, 0
    and 1 train first and 0's newest checkpoint is deleted before 3 restores."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(user_trainables)  # workers do not see tests/
    scheduler = PopulationBasedTraining(time_attr="training_iteration",
                                        perturbation_interval=INTERVAL, synch=True,
                                        hyperparam_mutations={"x": tune.uniform(0.5, 2.0)})
    results = tune.Tuner(
        user_trainables.declining,
        param_space={"x": tune.grid_search([2.0, 1.5, 1.0, 0.5])},
        tune_config=tune.TuneConfig(scheduler=scheduler, metric="score", mode="max",
                                    reuse_actors=True),
        run_config=tune.RunConfig(
            storage_path=str(tmp_path), stop={"training_iteration": 3 * INTERVAL}, verbose=0,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2,
                                                    checkpoint_score_attribute="score")),
    ).fit()
    assert sum(GONE in str(error) for error in results.errors) >= 1, results.errors


def test_pbtflow_never_deletes_a_checkpoint_pbt_may_restore(ray_runtime, workdir):
    """Random starting points, eight exploit rounds: the recipient is often
    scheduled after its donor, as above."""
    steps = 8 * INTERVAL
    experiment = pbtflow.Experiment(
        trainable="user_trainables:declining", metric="score", population=MEMBERS,
        perturbation_interval=INTERVAL, stop_iters=steps, cpus_per_trial_process=1.0,
        synch=True, seed=0, experiment_name="retention",
        initial={"x": tune.uniform(0.5, 2.0)}, mutations={"x": tune.uniform(0.5, 2.0)})
    results = pbtflow.tune(experiment)
    assert results.num_errors == 0, results.errors
    assert all(r.metrics["training_iteration"] == steps for r in results)
    for trial_dir in Path(results.experiment_path).glob("declining_*"):
        kept = list(trial_dir.glob("checkpoint_*"))
        # Its newest KEEP_CHECKPOINTS, plus at most one another member restored from.
        assert 1 <= len(kept) <= KEEP_CHECKPOINTS + 1, kept
