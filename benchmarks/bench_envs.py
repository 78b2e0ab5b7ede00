"""pbtflow's default PBT against one single run of a tuned configuration, per
environment, in one run on this machine: CartPole-v1 (target 450), Pendulum-v1
(-300) and LunarLander-v3 (200).

- tuned: plain RLlib PPO (no Tune, no PBT) with settings an expert would write
  for that environment (below, in ``TUNED``), ``Algorithm.train()`` until the
  mean episode return reaches the target.
- pbtflow: ``pbtflow.tune(Experiment(env=..., stop_return=target))`` with
  everything else at its defaults (population 4, the preset picked from the
  action space, MLflow on a SQLite store in a temporary folder).

Both figures are measured from the start of the side's process work (Ray's
start-up and the algorithm's build included) to the first result that
reaches the target: wall seconds, and env steps (the tuned run's; under PBT
all members' steps together, the price of the population). Each side runs in a fresh
process with a 10-minute cap; sides alternate, medians over seeds.

RLlib 2.60's mean episode return averages only the episodes that ended in that
iteration: with small batches and long episodes that may be one lucky episode.
So each side also prints how many episodes the reaching iteration ended, and
pbtflow's side the greedy return over 20 fresh episodes of the weights that
reached the target (pbtflow's evaluation after tuning, read back from MLflow).
``--stop-episodes N`` makes both sides stop on the mean over the latest
iterations that ended at least N episodes instead (pbtflow's setting of that
name; the single run computes the same window).

    python benchmarks/bench_envs.py                      # 3 seeds, the three envs (~1 h on 2 cores)
    python benchmarks/bench_envs.py --seeds 1 --envs CartPole-v1
    python benchmarks/bench_envs.py --first-seed 1 --seeds 2 --envs LunarLander-v3 --stop-episodes 20
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TARGETS = {"CartPole-v1": 450.0, "Pendulum-v1": -300.0, "LunarLander-v3": 200.0}
CAP_S = 600.0
RETURN = "env_runners/episode_return_mean"
STEPS = "env_runners/num_env_steps_sampled_lifetime"

# One hand-tuned PPO per environment: `training`, envs per runner, observation
# normalisation, activation.
TUNED = {
    # RLlib's tuned CartPole example (lr 3e-4, vf_loss_coeff 0.01), batch 2000.
    "CartPole-v1": ({"lr": 3e-4, "gamma": 0.99, "train_batch_size_per_learner": 2000,
                     "minibatch_size": 128, "num_epochs": 10, "vf_loss_coeff": 0.01}, 8, True, "tanh"),
    # RLlib's tuned Pendulum example (rllib/tuned_examples/ppo/pendulum_ppo.py).
    "Pendulum-v1": ({"lr": 3e-4, "gamma": 0.95, "lambda_": 0.1, "train_batch_size_per_learner": 1024,
                     "minibatch_size": 128, "num_epochs": 6, "vf_clip_param": 10.0,
                     "vf_loss_coeff": 0.01}, 20, True, "relu"),
    # rl-baselines3-zoo's LunarLander PPO (gamma 0.999, lambda 0.98, entropy
    # 0.01, 4 epochs, 16 envs) with RLlib's minibatch 128.
    "LunarLander-v3": ({"lr": 3e-4, "gamma": 0.999, "lambda_": 0.98, "train_batch_size_per_learner": 4096,
                        "minibatch_size": 128, "num_epochs": 4, "entropy_coeff": 0.01,
                        "vf_loss_coeff": 0.01}, 16, True, "tanh"),
}


def single_ppo(env: str, training: dict, envs: int, normalise: bool, activation: str, seed: int):
    """One plain RLlib PPO (no Tune), sampling ``envs`` vectorised envs in its
    own process, on a 2-CPU local Ray it starts."""
    import ray
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.connectors.env_to_module.mean_std_filter import MeanStdFilter
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    return (PPOConfig().environment(env)
            .env_runners(num_env_runners=0, num_envs_per_env_runner=envs,
                         env_to_module_connector=(lambda *_: MeanStdFilter()) if normalise else None)
            .training(**training)
            .rl_module(model_config=DefaultModelConfig(fcnet_activation=activation))
            .debugging(seed=seed)).build_algo()


def run_tuned(env: str, seed: int, folder: Path, stop_episodes: int = 1) -> dict:
    from pbtflow.stopping import windowed_mean  # the same window as pbtflow's stop
    from pbtflow.trainables.rllib import episodes_averaged

    start = time.time()
    algo = single_ppo(env, *TUNED[env], seed=seed)
    last, rows, cap = float("nan"), [], episodes_averaged(algo.config)
    while time.time() - start < CAP_S:
        result = algo.train()
        runners = result["env_runners"]
        value = runners.get("episode_return_mean", float("nan"))
        episodes = runners.get("num_episodes") or 0
        if value != value or not episodes:
            continue
        if stop_episodes > 1:
            value = windowed_mean(rows, result["training_iteration"], value, min(episodes, cap),
                                  stop_episodes)
            if value is None:
                continue
        last = value
        if value >= TARGETS[env]:
            return {"wall": time.time() - start, "steps": runners["num_env_steps_sampled_lifetime"],
                    "episodes": runners.get("num_episodes")}
    return {"wall": None, "steps": None, "note": f"return {last:.0f} at the cap"}


def run_pbtflow(env: str, seed: int, folder: Path, cpus: float | None = None,
                stop_episodes: int = 1) -> dict:
    import pbtflow
    from pbtflow.lineage import count_global_log  # Ray's own PBT log

    experiment = pbtflow.Experiment(
        env=env, stop_return=TARGETS[env], stop_iters=100_000, seed=seed,
        storage_path=str(folder / "ray"), tracking_uri=f"sqlite:///{folder / 'mlflow.db'}",
        experiment_name=f"bench-{env}", upload_checkpoint=False, cpus_per_trial_process=cpus,
        stop_episodes=stop_episodes)
    # The cap: an interruption ends the population as a user's Ctrl-C would.
    timer = threading.Timer(CAP_S, lambda: os.kill(os.getpid(), 2))
    timer.daemon = True
    start = time.time()
    timer.start()
    try:
        results = pbtflow.tune(experiment)
    except BaseException as error:  # interrupted at the cap
        best = best_at_cap(experiment, stop_episodes)
        note = type(error).__name__
        if best is not None:
            note += f"; best member's return {best:.0f} at the cap"
        return {"wall": None, "steps": None, "note": note}
    finally:
        timer.cancel()
    # The member that reached the target is the one Tune stopped on its own
    # result (done); the population stop leaves the others' as they were.
    reached = [r.metrics for r in results if r.metrics and r.metrics.get("done")]
    if not reached:
        return {"wall": None, "steps": None, "errors": results.num_errors}
    first = min(reached, key=lambda m: m["timestamp"])
    steps, actors = population_steps(results, first["timestamp"])
    return {"wall": first["timestamp"] - start, "steps": steps, "actors": actors,
            "exploits": sum(count_global_log(results.experiment_path).values()),
            "errors": results.num_errors, "episodes": first["env_runners"].get("num_episodes"),
            "greedy": greedy_return(experiment, first["trial_id"])}


def best_at_cap(experiment, stop_episodes: int) -> float | None:
    """The best member's return at the cap as the stop compares it, read
    back from MLflow: its latest iteration's mean, or with ``stop_episodes``
    its mean over that many latest episodes since its latest exploit (the
    stop counts its donor's before that too: left out here). Each iteration
    counts at most RLlib's 100 episodes (one env runner), as pbtflow's stop
    does."""
    from mlflow.tracking import MlflowClient

    from pbtflow import names
    from pbtflow.stopping import windowed_mean
    from pbtflow.trainables.rllib import EPISODES_THIS_ITER

    client = MlflowClient(experiment.tracking_uri)
    found = client.get_experiment_by_name(experiment.experiment_name)
    best = None
    for run in client.search_runs([found.experiment_id]) if found else []:
        history = {key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
                   for key in (names.TRAINING_ITERATION, RETURN, EPISODES_THIS_ITER, names.EXPLOITS)}
        rows, value, exploits = [], None, 0
        for step in sorted(history[RETURN]):
            if history[names.EXPLOITS].get(step, exploits) > exploits:  # the donor's weights from here
                rows, exploits = [], history[names.EXPLOITS][step]
            episodes = int(history[EPISODES_THIS_ITER].get(step, 0))
            value = windowed_mean(rows, history[names.TRAINING_ITERATION].get(step, step),
                                  history[RETURN][step], min(episodes, 100), stop_episodes)
        if value is not None and (best is None or value > best):
            best = value
    return best


def greedy_return(experiment, trial_id: str) -> float | None:
    """The mean return of 20 greedy episodes on fresh seeds of the weights
    that reached the target (pbtflow's evaluation after tuning, read back
    from the member's MLflow run), or None if it has none. It shows a lucky
    iteration: RLlib 2.60's episode_return_mean averages only the episodes
    that ended in that iteration, which may be one."""
    from mlflow.tracking import MlflowClient

    from pbtflow import names

    client = MlflowClient(experiment.tracking_uri)
    found = client.get_experiment_by_name(experiment.experiment_name)
    if found is None:
        return None
    runs = client.search_runs([found.experiment_id], f"tags.`{names.TRIAL_ID}` = '{trial_id}'")
    return runs[0].data.metrics.get(names.EVAL_RETURN_MEAN) if runs else None


def population_steps(results, until: float) -> tuple[int, int]:
    """Env steps all members sampled until ``until``, and the worker
    processes (actors) that ran them, from each trial's progress.csv (Tune's
    `pid`; a member's own lifetime step counter restarts at each exploit:
    RLlib does not restore it)."""
    total, pids = 0, set()
    for result in results:
        with open(Path(result.path) / "progress.csv") as rows:
            for row in csv.DictReader(rows):
                if float(row["timestamp"]) <= until:
                    total += float(row["env_runners/num_env_steps_sampled"] or 0)
                    pids.add(row["pid"])
    return int(total), len(pids)


def one(side: str, env: str, seed: int, folder: str, cpus: float | None = None,
        stop_episodes: int = 1) -> None:
    """Child process: one side, one env, one seed; prints one JSON line."""
    logging.disable(logging.WARNING)
    folder = Path(folder)
    os.chdir(folder)  # MLflow keeps a SQLite store's artifacts in ./mlruns
    row = (run_tuned(env, seed, folder, stop_episodes) if side == "tuned"
           else run_pbtflow(env, seed, folder, cpus, stop_episodes))
    print("ROW " + json.dumps(row), flush=True)


def spawn(side: str, env: str, seed: int, tmp: Path, cpus: float | None = None,
          stop_episodes: int = 1) -> dict:
    folder = tmp / f"{side}-{env}-{seed}"
    folder.mkdir()
    try:
        extra = (["--cpus-per-trial-process", str(cpus)] if cpus else []) + [
            "--stop-episodes", str(stop_episodes)]
        done = subprocess.run([sys.executable, __file__, "--one", side, env, str(seed), str(folder),
                               *extra],
                              capture_output=True, text=True, timeout=CAP_S + 180)
    except subprocess.TimeoutExpired:
        return {"wall": None, "steps": None, "note": "killed at the cap"}
    rows = [line[4:] for line in done.stdout.splitlines() if line.startswith("ROW ")]
    if not rows:
        return {"wall": None, "steps": None, "note": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(rows[-1])


def median(values: list) -> float | None:
    found = [v for v in values if v is not None]
    return statistics.median(found) if len(found) > len(values) / 2 else None


def fmt(value: float | None, digits: int = 0) -> str:
    return "capped" if value is None else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="the seeds run are first-seed .. first-seed + seeds - 1")
    parser.add_argument("--envs", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--cpus-per-trial-process", type=float, default=None,
                        help="pbtflow's CPUs per member (default: pbtflow's own default)")
    parser.add_argument("--stop-episodes", type=int, default=1,
                        help="both sides stop on the mean over the latest iterations that ended at "
                             "least this many episodes (pbtflow's --stop-episodes; default 1: the "
                             "latest iteration's)")
    parser.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        side, env, seed, folder = args.one
        return one(side, env, int(seed), folder, args.cpus_per_trial_process, args.stop_episodes)
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        for env in args.envs:
            rows: dict[str, list[dict]] = {"tuned": [], "pbtflow": []}
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                for side in (("tuned", "pbtflow") if seed % 2 == 0 else ("pbtflow", "tuned")):
                    row = spawn(side, env, seed, Path(tmp), args.cpus_per_trial_process,
                                args.stop_episodes)
                    rows[side].append(row)
                    extra = (f", {row['actors']} actors, {row['exploits']} exploits"
                             if "actors" in row else "")
                    if row.get("episodes") is not None:
                        extra += f", {row['episodes']} episodes in the reaching iteration"
                    if row.get("greedy") is not None:
                        extra += f", its greedy return {row['greedy']:.0f} (20 episodes)"
                    print(f"{env} seed {seed} {side}: {fmt(row['wall'], 1)} s, {fmt(row['steps'])} "
                          f"env steps{extra} {row.get('note', '')}", flush=True)
            tuned = [median([r[k] for r in rows["tuned"]]) for k in ("wall", "steps")]
            pbt = [median([r[k] for r in rows["pbtflow"]]) for k in ("wall", "steps")]
            ratio = pbt[0] / tuned[0] if None not in (pbt[0], tuned[0]) else None
            table.append((env, TARGETS[env], rows, tuned, pbt, ratio))
    print()
    print("| env | target | tuned single run: wall s (per seed) | env steps | "
          "pbtflow default PBT: wall s (per seed) | env steps, all members | PBT / tuned wall |")
    print("|---|---:|---|---:|---|---:|---:|")
    for env, target, rows, tuned, pbt, ratio in table:
        per = {side: " / ".join(fmt(r["wall"]) for r in found) for side, found in rows.items()}
        print(f"| {env} | {target:g} | {per['tuned']} (median {fmt(tuned[0])}) | {fmt(tuned[1])} | "
              f"{per['pbtflow']} (median {fmt(pbt[0])}) | {fmt(pbt[1])} | "
              f"{'n/a' if ratio is None else f'{ratio:.2f}x'} |")


if __name__ == "__main__":
    main()
