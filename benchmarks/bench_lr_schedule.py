"""pbtflow against plain Ray Tune on Ray's documented PBT function example
(the lr-schedule toy: population 8, perturbation interval 5, every member
starting at lr 1e-4), in the same run, on the same Ray runtime.

- plain Ray: ``ray.tune.examples.pbt_function.pbt_function`` as documented,
  with Tune's defaults (``reuse_actors=False``, 1 CPU per trial, the default
  loggers) and the example's ``CheckpointConfig(num_to_keep=2,
  checkpoint_score_attribute="mean_accuracy")``; each member stops when done or
  at 1000 iterations. (``fail_fast`` is left at Tune's default so that the
  errored trials are counted instead of ending the run; Tune's console table is
  off on both sides.) Then the same with every checkpoint kept, so that no
  trial dies: what Tune's defaults cost for the whole experiment.
- pbtflow: ``pbtflow.tune(Experiment(trainable="lr-schedule"))`` with its
  defaults, MLflow tracking included (a SQLite store in a temporary folder).

Then the quality of pbtflow's default PBT settings: the median over a few seeds
of the steps to the first member done, against the floor of a simulation in
which 8 members always use the optimal lr and the best quarter is copied into
the worst quarter every 5 steps.

    python benchmarks/bench_lr_schedule.py            # the full comparison (~25 min on 2 cores)
    python benchmarks/bench_lr_schedule.py --quick    # 60 iterations per member, one quality seed
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
from ray import tune
from ray.tune.examples.pbt_function import pbt_function
from ray.tune.schedulers import PopulationBasedTraining

import pbtflow
from pbtflow import names
from pbtflow.trainables import lr_schedule

GONE = "does not exist on storage anymore"
POPULATION, INTERVAL = 8, 5


def first_done(results) -> int | None:
    """Steps (training iterations) of the first member to pass the target."""
    steps = [r.metrics[names.TRAINING_ITERATION] for r in results
             if r.metrics and r.metrics.get(names.MEAN_ACCURACY, 0) > lr_schedule.TARGET]
    return min(steps) if steps else None


def run_plain_ray(storage: str, stop_iters: int, keep_all: bool = False) -> dict:
    """Ray's example (ray/tune/examples/pbt_function.py) with Tune's defaults;
    ``keep_all``: every checkpoint kept instead, so that no trial dies and the
    whole experiment runs (what Tune's defaults cost when nothing breaks)."""
    scheduler = PopulationBasedTraining(
        time_attr="training_iteration", perturbation_interval=INTERVAL,
        hyperparam_mutations={"lr": tune.uniform(0.0001, 0.02), "some_other_factor": [1, 2]})
    tuner = tune.Tuner(
        pbt_function,
        run_config=tune.RunConfig(
            name="plain_ray_keep_all" if keep_all else "plain_ray", storage_path=storage, verbose=0,
            stop={"done": True, "training_iteration": stop_iters},
            checkpoint_config=tune.CheckpointConfig() if keep_all else tune.CheckpointConfig(
                checkpoint_score_attribute="mean_accuracy", num_to_keep=2)),
        tune_config=tune.TuneConfig(scheduler=scheduler, metric="mean_accuracy", mode="max",
                                    num_samples=POPULATION),
        param_space={"lr": 0.0001, "some_other_factor": 1, "checkpoint_interval": INTERVAL},
    )
    start = time.perf_counter()
    results = tuner.fit()
    return {"wall": time.perf_counter() - start, "errors": results.num_errors,
            "gone": sum(GONE in str(e) for e in results.errors), "first_done": first_done(results)}


def run_pbtflow(storage: str, tracking: str, seed: int, stop_iters: int | None = None,
                stop_at_first_done: bool = False) -> dict:
    experiment = pbtflow.Experiment(
        trainable="lr-schedule", seed=seed, storage_path=storage, tracking_uri=tracking,
        experiment_name="bench-lr-schedule", stop_iters=stop_iters,
        stop_return=lr_schedule.TARGET if stop_at_first_done else None)
    start = time.perf_counter()
    results = pbtflow.tune(experiment)
    return {"wall": time.perf_counter() - start, "errors": results.num_errors,
            "gone": sum(GONE in str(e) for e in results.errors), "first_done": first_done(results)}


def simulate_floor(seed: int, max_steps: int = 1000) -> int:
    """Steps to the first done when all 8 members always train at the optimal lr
    and every 5 steps the worst quarter copies the best quarter's accuracy."""
    rng = np.random.default_rng(seed)
    accuracy = np.zeros(POPULATION)
    quarter = POPULATION // 4
    for step in range(1, max_steps + 1):
        accuracy = np.maximum(0.0, accuracy + rng.random(POPULATION) + 2 * rng.normal(size=POPULATION))
        if (accuracy > lr_schedule.TARGET).any():
            return step
        if step % INTERVAL == 0:
            order = np.argsort(accuracy)
            accuracy[order[:quarter]] = accuracy[order[-quarter:]]
    return max_steps


def _fmt(value, unit: str = "") -> str:
    if value is None:
        return "not reached"
    return f"{value:.0f}{unit}" if isinstance(value, float) else f"{value}{unit}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="60 iterations per member and one quality seed (a smoke test)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds for the quality median")
    parser.add_argument("--skip-plain-ray", action="store_true",
                        help="only pbtflow (e.g. to re-measure quality)")
    args = parser.parse_args()
    stop_iters = 60 if args.quick else 1000
    seeds = 1 if args.quick else args.seeds

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # MLflow keeps a SQLite store's artifacts in ./mlruns
        tracking = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        ours = run_pbtflow(str(Path(tmp) / "pbtflow"), tracking, seed=0, stop_iters=stop_iters)
        plain = None if args.skip_plain_ray else run_plain_ray(str(Path(tmp) / "ray"), stop_iters)
        whole = (None if args.skip_plain_ray else
                 run_plain_ray(str(Path(tmp) / "ray"), stop_iters, keep_all=True))
        quality = [run_pbtflow(str(Path(tmp) / f"q{seed}"), tracking, seed=seed,
                               stop_iters=stop_iters, stop_at_first_done=True)["first_done"]
                   for seed in range(seeds)]
    floor = statistics.median(simulate_floor(seed) for seed in range(201))

    print(f"\nlr-schedule, population {POPULATION}, perturbation interval {INTERVAL}, "
          f"{stop_iters} iterations at most, {ray.cluster_resources().get('CPU', 0):g} CPUs\n")
    print("| | wall time | errored trials | steps to first `done` |")
    print("|---|---:|---:|---:|")
    if plain is not None:
        print(f"| plain Ray (Tune defaults) | {plain['wall']:.0f} s | {plain['errors']} of {POPULATION}"
              f" ({plain['gone']} \"does not exist on storage anymore\") | "
              f"{_fmt(plain['first_done'])} |")
    if whole is not None:
        print(f"| plain Ray, every checkpoint kept | {whole['wall']:.0f} s | {whole['errors']} of "
              f"{POPULATION} | {_fmt(whole['first_done'])} |")
    print(f"| pbtflow defaults | {ours['wall']:.0f} s | {ours['errors']} of {POPULATION} | "
          f"{_fmt(ours['first_done'])} |")
    if plain is not None:
        print(f"| ratio (plain Ray / pbtflow) | {plain['wall'] / ours['wall']:.1f}x | | |")
        print(f"| ratio (plain Ray, every checkpoint kept / pbtflow) | "
              f"{whole['wall'] / ours['wall']:.1f}x | | |")
    reached = [q for q in quality if q is not None]
    median = statistics.median(reached) if len(reached) == len(quality) else None
    print(f"\nquality: steps to the first `done` with pbtflow's defaults, seeds 0-{seeds - 1}: "
          f"{', '.join(_fmt(q) for q in quality)}; median {_fmt(median)}; "
          f"floor (simulated optimal-lr population, median of 201): {floor:.0f}")


if __name__ == "__main__":
    main()
