"""``pbtflow.tune``: experiment -> (scheduler, trainable, param space,
callbacks) -> Ray Tune -> results, with every trial tracked in MLflow."""

from __future__ import annotations

import logging
import os
import random
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import ray
from ray import tune as ray_tune
from ray.tune import ResultGrid
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.utils import flatten_dict

from pbtflow import names, tracking, trainables
from pbtflow.experiment import Experiment, ExperimentError
from pbtflow.pbt import build_scheduler, flatten_keys

log = logging.getLogger(__name__)
DEFAULT_STORAGE = "pbtflow_results"


class _Progress(ray_tune.Callback):
    """One short line per reported result of the best member, and one per exploit,
    instead of Tune's full tables."""

    def __init__(self, metric: str, scheduler: Any, every_s: float = 10.0) -> None:
        self.metric, self.scheduler, self.every_s = metric, scheduler, every_s
        self._last_print, self._events_seen, self._best = 0.0, 0, {}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = flatten_dict(dict(result), delimiter="/").get(self.metric)
        if value is not None:
            self._best[trial.trial_id] = (value, result.get(names.TRAINING_ITERATION))
        for event in self.scheduler.events[self._events_seen:]:
            changed = ", ".join(f"{k} {event['old'][k]:.4g} -> {event['new'][k]:.4g}"
                                for k in event["new"]
                                if isinstance(event["new"][k], (int, float))
                                and event["new"][k] != event["old"].get(k))
            print(f"[pbt] {event['trial_id']} copies {event['donor_id']} at "
                  f"t={event['time']:g}: {changed or 'no change'}", flush=True)
        self._events_seen = len(self.scheduler.events)
        if time.time() - self._last_print >= self.every_s and self._best:
            self._last_print = time.time()
            best_id, (best, it) = max(self._best.items(), key=lambda kv: kv[1][0])
            print(f"[pbtflow] {len(trials)} trials, best {best_id}: {self.metric} = {best:.2f} "
                  f"at iteration {it}", flush=True)


class PopulationStopper(ray_tune.Stopper):
    """Stops a member at ``stop_iters`` and the whole population once the best
    member's metric reaches ``stop_value``. A metric the trainable never
    reports stops everything at the first result, with a clear message."""

    def __init__(self, metric: str, mode: str, stop_iters: int, stop_value: float | None) -> None:
        self.metric, self.mode = metric, mode
        self.stop_iters, self.stop_value = stop_iters, stop_value
        self.reached: tuple[str, float] | None = None
        self.error: str | None = None

    def __call__(self, trial_id: str, result: Mapping[str, Any]) -> bool:
        flat = flatten_dict(dict(result), delimiter="/")
        if self.metric not in flat:
            reported = ", ".join(sorted(k for k in flat if not k.startswith("config/"))[:12])
            self.error = (f"metric: the trainable never reports {self.metric!r} (it reported: "
                          f"{reported}, ...); pass --metric with one of those.")
            return True
        value = flat[self.metric]
        if self.stop_value is not None and value is not None:
            better = value >= self.stop_value if self.mode == "max" else value <= self.stop_value
            if better and self.reached is None:
                self.reached = (trial_id, float(value))
        return flat.get(names.TRAINING_ITERATION, 0) >= self.stop_iters

    def stop_all(self) -> bool:
        return self.reached is not None or self.error is not None


def _init_ray() -> None:
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")  # set inside an Azure ML ray job
    ray.init(address=address, include_dashboard=False, configure_logging=False)


def _check_resources(experiment: Experiment) -> None:
    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0), total.get("GPU", 0)
    if experiment.cpus_per_trial > cpus:
        raise ExperimentError(
            f"num_env_runners: one trial needs {experiment.cpus_per_trial:g} CPUs but the Ray cluster "
            f"has {cpus:g}; lower --num-env-runners or --cpus-per-env-runner, or add nodes.")
    if experiment.gpus_per_trial > gpus:
        raise ExperimentError(f"gpus_per_trial: one trial needs {experiment.gpus_per_trial:g} GPUs but "
                              f"the Ray cluster has {gpus:g}; lower --gpus-per-trial or add GPU nodes.")


def tune(experiment: Experiment) -> ResultGrid:
    """Run PBT for ``experiment`` and return Ray Tune's results. Every trial is
    an MLflow child run under one parent run."""
    if experiment.seed is not None:
        random.seed(experiment.seed)
        np.random.seed(experiment.seed)
    spec = trainables.build(experiment)
    metric = experiment.metric or spec.metric
    scheduler = build_scheduler(experiment, metric, spec.mutations, spec.repair)
    hyperparameters = sorted(set(flatten_keys(spec.mutations))
                             | set(flatten_keys(experiment.initial or {}))
                             | set(spec.hyperparameters))
    storage = Path(experiment.storage_path or DEFAULT_STORAGE).expanduser().resolve()
    run_name = f"{experiment.experiment_name}-{time.strftime('%Y%m%d-%H%M%S')}"

    with tracking.parent_run(experiment) as parent:
        parent.log_experiment(experiment, {"metric": metric, "trainable_resolved": str(spec.trainable)})
        parent.client.set_tag(parent.run_id, names.STORAGE, str(storage / run_name))
        _init_ray()
        _check_resources(experiment)
        tracker = tracking.TrialTracker(parent.client, parent.experiment_id, parent.run_id,
                                        hyperparameters, spec.logged_metrics, scheduler,
                                        experiment.time_attr)
        stopper = PopulationStopper(metric, experiment.mode, experiment.stop_iters,
                                    experiment.stop_return)
        tuner = ray_tune.Tuner(
            spec.trainable,
            param_space=spec.param_space,
            tune_config=ray_tune.TuneConfig(
                scheduler=scheduler,
                num_samples=experiment.population,
                reuse_actors=spec.reuse_actors,
                search_alg=BasicVariantGenerator(random_state=experiment.seed),
            ),
            run_config=ray_tune.RunConfig(
                name=run_name,
                storage_path=str(storage),
                stop=stopper,
                callbacks=[tracker, _Progress(metric, scheduler)],
                checkpoint_config=ray_tune.CheckpointConfig(
                    checkpoint_frequency=experiment.perturbation_checkpoint_interval,
                    checkpoint_at_end=True,
                    num_to_keep=4,
                ),
                failure_config=ray_tune.FailureConfig(max_failures=experiment.max_failures),
                verbose=0,  # _Progress prints a compact summary instead
            ),
        )
        try:
            results = tuner.fit()
        finally:
            tracker.close()
        if stopper.error:
            raise ExperimentError(stopper.error)
        if results.num_errors == len(results):
            raise RuntimeError(f"every trial failed; first error: {results.errors[0]}")
        best = results.get_best_result(metric, experiment.mode, scope="last")
        value = flatten_dict(dict(best.metrics or {}), delimiter="/").get(metric)
        best_trial = (best.metrics or {}).get("trial_id", "")
        parent.log_best(best_trial, metric, value,
                        {k: v for k, v in flatten_dict(best.config, delimiter=".").items()
                         if k in hyperparameters})
        log.info("best trial %s: %s = %s", best_trial, metric, value)
    return results
