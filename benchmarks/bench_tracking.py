"""Does MLflow tracking slow PBT down? The same PBT experiment (a cheap
function trainable, population 8) three ways in one run: no MLflow, Ray's
MLflowLoggerCallback (log_params_on_trial_end=True, the only setting that
survives exploits), and pbtflow's tracking. Prints wall times and ratios.

Asynchronous PBT's own decisions (which member pauses or exploits when) vary
from run to run by more than tracking costs, so no MLflow and pbtflow run
``--rounds`` times each, alternating which goes first, and the ratio is taken
of the medians; Ray's callback, several times slower, runs once.

    python benchmarks/bench_tracking.py [--iters 300] [--rounds 3] [--tracking-uri URI]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import ray
from mlflow.tracking import MlflowClient
from ray import tune
from ray.air.integrations.mlflow import MLflowLoggerCallback

from pbtflow import names
from pbtflow.pbt import build_scheduler
from pbtflow.experiment import Experiment
from pbtflow.tracking import TrialTracker


def trainable(config):
    """A noisy ascent whose speed depends on lr: cheap, so tracking dominates."""
    start, x = 0, 0.0
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            start, x = map(float, (Path(d) / "state").read_text().split())
    rng = random.Random(int(start) * 7919 + hash(config["lr"]) % 1000)
    for step in range(int(start) + 1, 10**9):
        x += config["lr"] * (1 - config["lr"]) + 0.01 * rng.gauss(0, 1)
        metrics = {"score": x, "lr_used": config["lr"], "noise": rng.random()}
        if step % 5 == 0:
            with tempfile.TemporaryDirectory() as d:
                (Path(d) / "state").write_text(f"{step} {x}")
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        else:
            tune.report(metrics)


def run(kind: str, iters: int, uri: str, storage: str) -> float:
    experiment = Experiment(trainable="pkg.mod:fn", population=8, stop_iters=iters,
                            perturbation_interval=5, metric="score")
    scheduler = build_scheduler(experiment, "score", {"lr": tune.uniform(0.01, 0.9)})
    callbacks = []
    if kind == "ray-mlflow":
        callbacks.append(MLflowLoggerCallback(tracking_uri=uri, experiment_name="bench-ray",
                                              log_params_on_trial_end=True))
    elif kind == "pbtflow":
        client = MlflowClient(uri)
        exp_id = client.create_experiment(f"bench-pbtflow-{time.time_ns()}")
        parent = client.create_run(exp_id, tags={names.ROLE: "parent"}).info.run_id
        callbacks.append(TrialTracker(client, exp_id, parent, ["lr"], None, scheduler))
    tuner = tune.Tuner(
        trainable,
        param_space={"lr": tune.uniform(0.01, 0.9)},
        tune_config=tune.TuneConfig(scheduler=scheduler, num_samples=8, reuse_actors=True),
        run_config=tune.RunConfig(name=f"bench-{kind}", storage_path=storage, verbose=0,
                                  stop={"training_iteration": iters}, callbacks=callbacks),
    )
    start = time.perf_counter()
    results = tuner.fit()
    for cb in callbacks:
        if isinstance(cb, TrialTracker):
            cb.close()  # the last rows delivered: part of what the user waits for
    elapsed = time.perf_counter() - start
    assert results.num_errors == 0, results.errors
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tracking-uri", help="default: a fresh sqlite store in a temp folder")
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    times: dict[str, list[float]] = {"no-mlflow": [], "ray-mlflow": [], "pbtflow": []}
    with tempfile.TemporaryDirectory() as tmp:
        uri = args.tracking_uri or f"sqlite:///{tmp}/mlflow.db"
        for round_ in range(args.rounds):
            order = ("no-mlflow", "pbtflow") if round_ % 2 == 0 else ("pbtflow", "no-mlflow")
            for kind in order:
                times[kind].append(run(kind, args.iters, uri, f"{tmp}/results"))
        times["ray-mlflow"].append(run("ray-mlflow", args.iters, uri, f"{tmp}/results"))
    median = {kind: statistics.median(t) for kind, t in times.items()}
    print(f"\nPBT, population 8, {args.iters} iterations each, tracking at {uri.split(':')[0]}, "
          f"{args.rounds} rounds")
    print(f"{'setup':<12} {'runs, wall s':<24} {'median':>7} {'/ no-mlflow':>11} {'/ ray-mlflow':>13}")
    for kind, t in times.items():
        runs = " / ".join(f"{x:.1f}" for x in t)
        print(f"{kind:<12} {runs:<24} {median[kind]:7.1f} {median[kind] / median['no-mlflow']:11.2f} "
              f"{median[kind] / median['ray-mlflow']:13.2f}")


if __name__ == "__main__":
    main()
