"""PB2 against PBT on the lr-schedule toy (Ray's PBT function example: every
member starts at lr 1e-4, mutations lr ~ U(1e-4, 0.02), perturbation interval
5), in one run: PB2 with population 4, PBT with population 4 and 8. Each run
stops at the first member done (accuracy > 200); the figures are the steps
(training iterations) that member took and the wall time, median over seeds,
with MLflow tracking on (a SQLite store in a temporary folder). The order of
the three sides rotates from seed to seed.

    python benchmarks/bench_pb2.py              # seeds 0-4 (~10 min on 2 cores)
    python benchmarks/bench_pb2.py --seeds 2    # fewer seeds
"""

from __future__ import annotations

import argparse
import os
import logging
import statistics
import tempfile
import time
from pathlib import Path

import ray

import pbtflow
from pbtflow import names
from pbtflow.trainables import lr_schedule

SIDES = (("pb2", 4), ("pbt", 4), ("pbt", 8))


def first_done(results) -> int | None:
    steps = [r.metrics[names.TRAINING_ITERATION] for r in results
             if r.metrics and r.metrics.get(names.MEAN_ACCURACY, 0) > lr_schedule.TARGET]
    return min(steps) if steps else None


def run(scheduler: str, population: int, seed: int, folder: Path) -> dict:
    experiment = pbtflow.Experiment(
        trainable="lr-schedule", scheduler=scheduler, population=population, seed=seed,
        stop_return=lr_schedule.TARGET, storage_path=str(folder / "ray"),
        tracking_uri=f"sqlite:///{folder / 'mlflow.db'}", experiment_name=f"{scheduler}-{population}")
    start = time.perf_counter()
    results = pbtflow.tune(experiment)
    return {"wall": time.perf_counter() - start, "steps": first_done(results),
            "errors": results.num_errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    logging.disable(logging.INFO)
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    rows: dict[tuple[str, int], list[dict]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # MLflow keeps a SQLite store's artifacts in ./mlruns
        for seed in range(args.seeds):
            order = SIDES[seed % 3:] + SIDES[:seed % 3]
            for scheduler, population in order:
                folder = Path(tmp) / f"{scheduler}{population}-{seed}"
                row = run(scheduler, population, seed, folder)
                rows[(scheduler, population)].append(row)
                print(f"seed {seed} {scheduler} x{population}: {row['steps']} steps to the first "
                      f"done, {row['wall']:.1f} s, {row['errors']} errored", flush=True)
    print()
    print("| scheduler | population | steps to first done (per seed) | median steps | median wall s |")
    print("|---|---:|---|---:|---:|")
    for (scheduler, population), found in rows.items():
        steps = [r["steps"] if r["steps"] is not None else 1000 for r in found]
        print(f"| {scheduler.upper()} | {population} | {' / '.join(map(str, steps))} | "
              f"{statistics.median(steps):g} | {statistics.median(r['wall'] for r in found):.1f} |")


if __name__ == "__main__":
    main()
