"""Where the discrete PPO preset's CartPole starts come from: single RLlib PPO
runs (no Tune, no PBT) of several settings on CartPole-v1, each in a fresh
process, until the mean return reaches 450; seconds of training (after Ray's
start and the Algorithm's build) and env steps, per seed, with medians.

Every run samples 8 vectorised envs in the Algorithm's own process with
observations normalised (RLlib's MeanStdFilter), tanh, gamma 0.99 and
vf_loss_coeff 0.01, as the preset; ``lambda``/``clip`` left out are RLlib's
own (1.0 and 0.3).

    python benchmarks/bench_ppo_starts.py                 # seeds 0-4, every setting (~15 min on 2 cores)
    python benchmarks/bench_ppo_starts.py --seeds 2 --settings quick quick_lambda_0.95
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import time

CAP_S = 120.0
TARGET = 450.0
SETTINGS = {
    # the preset's second start: RLlib's tuned CartPole example, batch 2000
    "rllib_tuned": {"lr": 3e-4, "train_batch_size_per_learner": 2000, "minibatch_size": 128, "num_epochs": 10},
    # the preset's first start
    "quick": {"lr": 1e-3, "train_batch_size_per_learner": 1000, "minibatch_size": 256, "num_epochs": 4},
    # both as the preset had them before: lambda 0.95, clip 0.2
    "rllib_tuned_lambda_0.95": {"lr": 3e-4, "train_batch_size_per_learner": 2000, "minibatch_size": 128,
                                "num_epochs": 10, "lambda_": 0.95, "clip_param": 0.2},
    "quick_lambda_0.95": {"lr": 1e-3, "train_batch_size_per_learner": 1000, "minibatch_size": 256,
                          "num_epochs": 4, "lambda_": 0.95, "clip_param": 0.2},
    # other settings of the sweep
    "lr1e-3_b1000_mb128_e4": {"lr": 1e-3, "train_batch_size_per_learner": 1000, "minibatch_size": 128,
                              "num_epochs": 4},
    "lr1e-3_b1000_mb128_e6": {"lr": 1e-3, "train_batch_size_per_learner": 1000, "minibatch_size": 128,
                              "num_epochs": 6},
    "lr1e-3_b500_mb128_e4": {"lr": 1e-3, "train_batch_size_per_learner": 500, "minibatch_size": 128,
                             "num_epochs": 4},
    "lr5e-4_b500_mb128_e4": {"lr": 5e-4, "train_batch_size_per_learner": 500, "minibatch_size": 128,
                             "num_epochs": 4},
    "lr1e-3_b2000_mb128_e10": {"lr": 1e-3, "train_batch_size_per_learner": 2000, "minibatch_size": 128,
                               "num_epochs": 10},
}


def one(name: str, seed: int) -> dict:
    logging.disable(logging.WARNING)
    from bench_envs import single_ppo  # the same build as bench_envs' tuned single run

    algo = single_ppo("CartPole-v1", {"gamma": 0.99, "vf_loss_coeff": 0.01, **SETTINGS[name]}, 8, True,
                      "tanh", seed)
    start = time.time()
    while time.time() - start < CAP_S:
        runners = algo.train()["env_runners"]
        if runners.get("episode_return_mean", float("-inf")) >= TARGET:
            return {"train": time.time() - start, "steps": runners["num_env_steps_sampled_lifetime"]}
    return {"train": None, "steps": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("ROW " + json.dumps(one(args.one[0], int(args.one[1]))), flush=True)
        return
    rows: dict[str, list[dict]] = {name: [] for name in args.settings}
    for seed in range(args.seeds):
        for name in args.settings:
            done = subprocess.run([sys.executable, __file__, "--one", name, str(seed)],
                                  capture_output=True, text=True, timeout=CAP_S + 120)
            found = [line[4:] for line in done.stdout.splitlines() if line.startswith("ROW ")]
            row = json.loads(found[-1]) if found else {"train": None, "steps": None}
            rows[name].append(row)
            shown = "not in %.0f s" % CAP_S if row["train"] is None else f"{row['train']:.1f} s, {row['steps']:.0f} steps"
            print(f"{name} seed {seed}: {shown}", flush=True)
    print("\n| setting | s of training to 450 (per seed) | median s | env steps (median) |\n|---|---|---:|---:|")
    for name, found in rows.items():
        per = " / ".join("-" if r["train"] is None else f"{r['train']:.1f}" for r in found)
        # a capped run counts as the cap
        median = statistics.median(CAP_S if r["train"] is None else r["train"] for r in found)
        steps = [r["steps"] for r in found if r["steps"] is not None]
        print(f"| {name} | {per} | {median:.1f} | {statistics.median(steps) if steps else float('nan'):.0f} |")


if __name__ == "__main__":
    main()
