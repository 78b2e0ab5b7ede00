"""pbtflow against the plain-Ray PBT an expert writes, on Ray's own PBT
function example, until the first member is done.

The problem is Ray's ``ray.tune.examples.pbt_function:pbt_function`` as it
ships (the lr-schedule toy): population 8, perturbation interval 5, every
member starting at lr 1e-4 with a checkpoint every 5 steps, mutations
lr ~ U(1e-4, 0.02); the experiment ends when the first member's accuracy
passes 200 (``done``). Sides, each in a fresh process:

- ``defaults``: Tune's defaults (``reuse_actors=False``) and the example's
  ``CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=...)``;
- ``expert``: ``reuse_actors=True``, every checkpoint kept
  (``CheckpointConfig(num_to_keep=None)``), Tune's CSV result logger only
  (``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1``, as pbtflow), and a ten-line ``Stopper`` whose
  ``stop_all()`` ends the population at the first done (also used by
  ``defaults``, so that both stop at the same point);
- ``pbtflow``: ``pbtflow.tune`` with the same function as a user trainable,
  MLflow on a SQLite store; the driver's time is split by pbtflow component
  (``--sides ...,pbtflow-shared``: the same with a quarter CPU per member, so
  that all 8 train at once, pbtflow's earlier default).

Rounds alternate the order of the sides; medians and ratios are printed.
Each side starts Ray inside the timed span: the plain-Ray sides first thing
(2 CPUs, no dashboard), pbtflow as `pbtflow tune` does (no dashboard, this
machine's CPUs; it sets up MLflow's store meanwhile).

    python benchmarks/bench_expert.py [--rounds 3] [--sides defaults,expert,pbtflow]

Tune's defaults take about ten minutes here: they run in the first round only
(``--defaults-rounds``).
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench_lr_schedule import first_done  # the same problem, the same measure

POPULATION, INTERVAL, TARGET, MAX_ITERS = 8, 5, 200.0, 1000
TRAINABLE = "ray.tune.examples.pbt_function:pbt_function"
SIDES = ("defaults", "expert", "pbtflow")


# -- inside a side's process ------------------------------------------------------------
class Timers:
    """Seconds and calls per label, from any thread."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.calls: dict[str, int] = collections.defaultdict(int)
        self._lock = threading.Lock()

    def wrap(self, owner, name: str, label: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                with self._lock:
                    self.seconds[label] += time.perf_counter() - start
                    self.calls[label] += 1

        setattr(owner, name, timed)


def run_plain(side: str, storage: str, seed: int, population: int = POPULATION,
              max_iters: int = MAX_ITERS, until_done: bool = True) -> dict:
    import random

    import numpy as np
    import ray
    from ray import tune
    from ray.tune.examples.pbt_function import pbt_function
    from ray.tune.schedulers import PopulationBasedTraining

    class FirstDone(tune.Stopper):
        """The population ends once any member is done."""

        def __init__(self) -> None:
            self.done = False
            self.results = 0

        def __call__(self, trial_id, result) -> bool:
            self.results += 1
            self.done = self.done or (until_done and bool(result.get("done")))
            return self.done or result["training_iteration"] >= max_iters

        def stop_all(self) -> bool:
            return self.done

    random.seed(seed)
    np.random.seed(seed)
    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    expert = side == "expert"
    stopper = FirstDone()
    callbacks = []
    if expert:  # CSV results only: the JSON and TensorBoard loggers cost the driver time
        from ray.tune.logger import CSVLoggerCallback

        os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
        callbacks = [CSVLoggerCallback()]
    tuner = tune.Tuner(
        pbt_function,
        param_space={"lr": 1e-4, "checkpoint_interval": INTERVAL},
        tune_config=tune.TuneConfig(
            scheduler=PopulationBasedTraining(time_attr="training_iteration",
                                              perturbation_interval=INTERVAL,
                                              hyperparam_mutations={"lr": tune.uniform(1e-4, 0.02)}),
            metric="mean_accuracy", mode="max", num_samples=population, reuse_actors=expert),
        run_config=tune.RunConfig(
            name=side, storage_path=storage, verbose=0, stop=stopper, callbacks=callbacks,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None) if expert else
            tune.CheckpointConfig(checkpoint_score_attribute="mean_accuracy", num_to_keep=2)),
    )
    results = tuner.fit()
    wall = time.perf_counter() - start
    return {"wall": wall, "first_done": first_done(results), "errors": results.num_errors,
            "results": stopper.results}


def run_pbtflow(storage: str, seed: int, cpus: float | None = None, population: int = POPULATION,
                max_iters: int = MAX_ITERS, until_done: bool = True, mlflow: bool = True) -> dict:
    """pbtflow.tune on the same problem, its driver timed by component;
    ``mlflow=False`` drops the rows instead of writing them (what the MLflow
    writes cost, everything else the same)."""
    from ray import tune as ray_tune
    from ray.tune.logger import CSVLoggerCallback
    from ray.tune.search.basic_variant import BasicVariantGenerator

    import pbtflow
    from pbtflow import cluster, console, delivery, pbt, retention, runs, stopping, summary, tracking, tuning

    timers = Timers()
    for owner, name, label in [
        (tracking.TrialTracker, "on_trial_result", "tracking callback"),
        (tracking.TrialTracker, "on_trial_start", "tracking callback"),
        (tracking.TrialTracker, "on_trial_complete", "tracking callback"),
        (delivery.Writer, "flush", "MLflow writer (its thread)"),
        (delivery, "deliver", "MLflow writer: store calls in the driver"),
        (delivery.StoreHelper, "deliver", "MLflow writer: through its helper process"),
        (retention.PBTSafeRetention, "on_checkpoint", "retention"),
        (retention.PBTSafeRetention, "on_trial_complete", "retention"),
        (console.Progress, "on_trial_result", "progress"),
        (stopping.TrainableWatch, "on_trial_complete", "trainable watch"),
        (stopping.StallWatch, "on_trial_result", "stall watch"),
        (stopping.PopulationStopper, "__call__", "stopper"),
        (CSVLoggerCallback, "on_trial_result", "CSV logger (Ray's, both sides)"),
        (pbt.Recording, "on_trial_result", "PBT scheduler (Ray's, both sides)"),
        (stopping.Population, "is_finished", "population generator"),
        (BasicVariantGenerator, "next_trial", "population generator"),
        (BasicVariantGenerator, "on_trial_complete", "population generator"),
        (pbtflow, "tune", "pbtflow.tune (all of it)"),
        (runs, "check_reachable", "start: tracking check"),
        (runs, "_experiment_id", "start: MLflow store and experiment"),
        (runs.ParentRun, "end", "end: parent run"),
        (tuning, "check_storage", "start: storage check"),
        (cluster, "init_ray", "ray.init (both sides)"),
        (runs.ParentRun, "log_experiment", "start: parent run"),
        (tuning, "_new_tuner", "start: build tuner"),
        (ray_tune.Tuner, "fit", "Tuner.fit"),
        (tracking.TrialTracker, "close", "end: final flush"),
        (runs.ParentRun, "log_best", "end: best, lineage"),
        (runs, "log_lineage", "end: best, lineage"),
        (summary, "log_plots", "end: pictures"),
        (summary, "check_record", "end: record check"),
    ]:
        timers.wrap(owner, name, label)

    if not mlflow:
        delivery.Writer.flush = lambda self: self._pending.clear() or True
    experiment = pbtflow.Experiment(
        trainable=TRAINABLE, population=population, perturbation_interval=INTERVAL,
        checkpoint_interval=INTERVAL, metric="mean_accuracy",
        stop_return=TARGET if until_done else None, stop_iters=max_iters, seed=seed, storage_path=storage, cpus_per_trial_process=cpus,
        tracking_uri=f"sqlite:///{Path(storage) / 'mlflow.db'}", experiment_name="bench-expert",
        initial={"lr": 1e-4, "checkpoint_interval": INTERVAL},
        mutations={"lr": {"uniform": [1e-4, 0.02]}})
    # pbtflow starts Ray itself, as `pbtflow tune` does (it sets up MLflow's
    # store meanwhile); the expert's script starts it first thing.
    start = time.perf_counter()
    results = pbtflow.tune(experiment)
    wall = time.perf_counter() - start
    from mlflow.tracking import MlflowClient

    from pbtflow import names

    # The record check's outcome (MLflow against Ray's PBT log), as tagged on the parent run.
    client = MlflowClient(experiment.tracking_uri)
    (parent,) = client.search_runs([client.get_experiment_by_name(experiment.experiment_name).experiment_id],
                                   f"tags.`{names.ROLE}` = 'parent'")
    return {"wall": wall, "first_done": first_done(results), "errors": results.num_errors,
            "results": timers.calls["stopper"], "seconds": dict(timers.seconds),
            "calls": dict(timers.calls), "record_check": parent.data.tags.get(names.RECORD_CHECK, "")[:80]}


def side_main(side: str, seed: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # MLflow keeps a SQLite store's artifacts in ./mlruns
        if side == "pbtflow":
            out = run_pbtflow(tmp, seed)
        elif side == "pbtflow-shared":  # a quarter CPU per member: all 8 train at once
            out = run_pbtflow(tmp, seed, cpus=0.25)
        else:
            out = run_plain(side, tmp, seed)
    print("RESULT " + json.dumps(out), flush=True)


# -- the driver of the comparison -------------------------------------------------------
def run_side(side: str, seed: int) -> dict:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--side", side, "--seed", str(seed)],
                          capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0 or "RESULT " not in proc.stdout:
        raise RuntimeError(f"{side} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.split("RESULT ", 1)[1].splitlines()[0])
    out["process"] = time.perf_counter() - start
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sides", default=",".join(SIDES))
    parser.add_argument("--defaults-rounds", type=int, default=1,
                        help="rounds of Tune's defaults, ten times slower than the others")
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        side_main(args.side, args.seed)
        return
    sides = args.sides.split(",")
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    for r in range(args.rounds):
        order = sides if r % 2 == 0 else sides[::-1]
        for side in order:
            if side == "defaults" and r >= args.defaults_rounds:
                continue
            out = run_side(side, seed=r)
            runs[side].append(out)
            print(f"round {r}: {side}: {out['wall']:.1f} s, first done at {out['first_done']}, "
                  f"{out['errors']} errored", flush=True)

    sides = [s for s in sides if runs[s]]  # --defaults-rounds 0: no defaults row
    med = {s: statistics.median(o["wall"] for o in runs[s]) for s in sides}
    ref = "expert" if "expert" in sides else sides[0]
    print(f"\nRay's pbt_function, population {POPULATION}, perturbation interval {INTERVAL}, "
          f"until the first member is done; {args.rounds} rounds, 2 CPUs\n")
    print(f"| | wall s per round | median | / {ref} | steps to first done (median) | errored |")
    print("|---|---|---:|---:|---:|---:|")
    for s in sides:
        steps = [o["first_done"] for o in runs[s] if o["first_done"] is not None]
        walls = " / ".join(f"{o['wall']:.1f}" for o in runs[s])
        print(f"| {s} | {walls} | {med[s]:.1f} | "
              f"{med[s] / med[ref]:.2f} | {statistics.median(steps) if steps else '-'} | "
              f"{sum(o['errors'] for o in runs[s])} |")
    if "pbtflow" in sides and runs["pbtflow"]:
        print("\npbtflow's driver, seconds per run (median over rounds; the writer runs in its "
              "own thread) and per result:\n")
        print("| component | s per run | calls per run | ms per result |")
        print("|---|---:|---:|---:|")
        labels = sorted({k for o in runs["pbtflow"] for k in o["seconds"]},
                        key=lambda k: -statistics.median(o["seconds"].get(k, 0) for o in runs["pbtflow"]))
        rows = statistics.median(o["results"] for o in runs["pbtflow"])
        for label in labels:
            secs = statistics.median(o["seconds"].get(label, 0.0) for o in runs["pbtflow"])
            calls = statistics.median(o["calls"].get(label, 0) for o in runs["pbtflow"])
            print(f"| {label} | {secs:.2f} | {calls:.0f} | {1000 * secs / max(rows, 1):.2f} |")
        print(f"\n(results per pbtflow run, median: {rows:.0f})")


if __name__ == "__main__":
    main()
