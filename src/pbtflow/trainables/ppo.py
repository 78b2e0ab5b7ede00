"""RLlib PPO (new API stack) on any gymnasium environment: the search-space
presets and the repair that keeps mutated PPO settings consistent. The
Algorithm the members run is in ``ppo_algorithm``; RLlib is imported only
when a PPO experiment is built."""

from __future__ import annotations

from typing import Any

from ray import tune

from pbtflow.trainables import TrainableSpec
from pbtflow.trainables.rllib import spec

LR_STEPS = [1e-3, 5e-4, 3e-4, 1e-4, 5e-5, 1e-5]  # adjacent moves under PBT

# Discrete actions. Three known-good starts, each the first members' config
# (with a population of 2, only the first two):
# - a quick CartPole setting: lr 1e-3, a batch of 1000, minibatch 256, 4
#   epochs; alone it reached 450 on CartPole-v1 after 4.9 / 3.5 / 112.8 s of
#   training on seeds 0-2 (benchmarks/bench_ppo_starts.py, 2 cores);
# - RLlib's tuned CartPole example (rllib/tuned_examples/ppo/cartpole_ppo.py:
#   lr 3e-4, gamma 0.99, vf_loss_coeff 0.01, and RLlib's lambda 1.0 and clip
#   0.3) with a batch of 2000, minibatch 128 and 10 epochs: slower but steady
#   (15.7 / 7.2 / 25.5 s);
# - the long-horizon settings of rl-baselines3-zoo's LunarLander PPO (gamma
#   0.999, lambda 0.98, entropy 0.01, 4 epochs; with 16 envs and a batch of
#   4096 it alone reaches 200 on LunarLander-v3 in about 2.5 min).
# With vf_loss_coeff 0.01 the value function learns slowly, and lambda below 1
# leans on it: with lambda 0.95 and clip 0.2 the first two took 71.3 / 31.4 /
# 82.0 s and 22.3 / 22.1 / 38.5 s. The other members are sampled from
# `initial`.
DISCRETE = {
    "known_good": [
        {"gamma": 0.99, "lambda": 1.0, "lr": 1e-3, "clip_param": 0.3, "entropy_coeff": 0.0,
         "vf_loss_coeff": 0.01, "num_epochs": 4, "minibatch_size": 256,
         "train_batch_size_per_learner": 1000},
        {"gamma": 0.99, "lambda": 1.0, "lr": 3e-4, "clip_param": 0.3, "entropy_coeff": 0.0,
         "vf_loss_coeff": 0.01, "num_epochs": 10, "minibatch_size": 128,
         "train_batch_size_per_learner": 2000},
        {"gamma": 0.999, "lambda": 0.98, "lr": 3e-4, "clip_param": 0.2, "entropy_coeff": 0.01,
         "vf_loss_coeff": 0.01, "num_epochs": 4, "minibatch_size": 128,
         "train_batch_size_per_learner": 4000},
    ],
    "initial": {
        "gamma": tune.choice([0.99, 0.999]),
        "lambda": tune.choice([0.95, 0.98, 1.0]),
        "lr": tune.choice([1e-3, 5e-4, 3e-4]),
        "clip_param": tune.choice([0.2, 0.3]),
        "entropy_coeff": tune.choice([0.0, 0.001]),
        "vf_loss_coeff": tune.choice([0.01, 0.05]),
        "num_epochs": tune.choice([4, 6, 10]),
        "minibatch_size": tune.choice([128, 256]),
        "train_batch_size_per_learner": tune.choice([1000, 2000, 4000]),
    },
    "mutations": {
        "gamma": tune.uniform(0.95, 0.9995),
        "lambda": tune.uniform(0.8, 1.0),
        "lr": LR_STEPS,
        "clip_param": tune.uniform(0.1, 0.4),
        "entropy_coeff": [0.0, 0.001, 0.003, 0.01, 0.03],
        "vf_loss_coeff": [0.005, 0.01, 0.03, 0.1, 0.3, 1.0],
        "num_epochs": tune.randint(2, 21),
        "minibatch_size": [64, 128, 256, 512],
        "train_batch_size_per_learner": tune.randint(500, 8001),
    },
    "num_envs_per_env_runner": 8,
    "observation_filter": True,
    "model_config": {"fcnet_activation": "tanh"},
}

# Continuous actions. The known-good start is RLlib's tuned Pendulum example
# (rllib/tuned_examples/ppo/pendulum_ppo.py): observations normalised by a
# MeanStdFilter, 20 vectorised envs, gamma 0.95, lambda 0.1, lr 3e-4, batch
# 1024, minibatch 128, 6 epochs, relu, vf_clip_param 10, vf_loss_coeff 0.01
# (with the value function sharing the policy's layers, a larger coefficient
# lets Pendulum's large value errors swamp the policy gradient: without it the
# same settings stayed at -1000 for 750k steps here).
CONTINUOUS = {
    "known_good": [
        {"gamma": 0.95, "lambda": 0.1, "lr": 3e-4, "clip_param": 0.2, "entropy_coeff": 0.0,
         "vf_loss_coeff": 0.01, "num_epochs": 6, "minibatch_size": 128,
         "train_batch_size_per_learner": 1024},
    ],
    # The other members start near it: with gamma 0.99 and lambda 0.9 in the
    # first draws, an early, noisy ranking copied such a member over the
    # known-good one, and the population stayed at -1000.
    "initial": {
        "gamma": tune.choice([0.95, 0.97]),
        "lambda": tune.choice([0.1, 0.2, 0.3]),
        "lr": tune.choice([1e-3, 5e-4, 3e-4]),
        "clip_param": 0.2,
        "entropy_coeff": 0.0,
        "vf_loss_coeff": 0.01,
        "num_epochs": tune.choice([6, 10]),
        "minibatch_size": 128,
        "train_batch_size_per_learner": tune.choice([1024, 2048]),
    },
    "mutations": {
        "gamma": tune.uniform(0.9, 0.999),
        "lambda": [0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.95, 0.99],
        "lr": LR_STEPS,
        "clip_param": tune.uniform(0.1, 0.4),
        "entropy_coeff": [0.0, 0.001, 0.003, 0.01],
        "vf_loss_coeff": [0.001, 0.003, 0.01, 0.03, 0.1],
        "num_epochs": tune.randint(2, 21),
        "minibatch_size": [64, 128, 256, 512],
        "train_batch_size_per_learner": tune.randint(512, 8193),
    },
    "num_envs_per_env_runner": 20,
    "observation_filter": True,
    "model_config": {"fcnet_activation": "relu"},
}

# The cluster reference space, after Ray's tune/examples/pbt_ppo_example.py
# (cluster scale, discrete actions). Keys are RLlib config keys.
CLUSTER = {
    "known_good": [],
    "initial": {
        "lambda": 0.95,
        "clip_param": 0.2,
        "lr": 1e-4,
        "num_epochs": tune.choice([10, 20, 30]),
        "minibatch_size": tune.choice([128, 512, 2048]),
        "train_batch_size_per_learner": tune.choice([10000, 20000, 40000]),
        "kl_coeff": 1.0,
    },
    "mutations": {
        "lambda": tune.uniform(0.9, 1.0),
        "clip_param": tune.uniform(0.01, 0.5),
        "lr": [1e-3, 5e-4, 1e-4, 5e-5, 1e-5],
        "num_epochs": tune.randint(1, 31),
        "minibatch_size": tune.randint(128, 16385),
        "train_batch_size_per_learner": tune.randint(2000, 160001),
    },
    "num_envs_per_env_runner": 1,
    "observation_filter": False,
    "model_config": {"fcnet_activation": "tanh"},
}

PRESETS = {"discrete": DISCRETE, "continuous": CONTINUOUS, "cluster": CLUSTER}

# --smoke: tiny batches, so that an iteration takes about a second.
SMOKE_INITIAL = {
    "lr": tune.choice([1e-3, 5e-4]),
    "num_epochs": 4,
    "minibatch_size": 64,
    "train_batch_size_per_learner": 256,
}

# A curated set: one PPO result has ~96 numeric keys and Azure ML's MLflow
# caps metric names per run, so never log the whole result.
LOGGED_METRICS = (
    "learners/default_policy/policy_loss",
    "learners/default_policy/vf_loss",
    "learners/default_policy/total_loss",
    "learners/default_policy/mean_kl_loss",
    "learners/default_policy/entropy",
    "learners/default_policy/curr_kl_coeff",
    "learners/default_policy/default_optimizer_learning_rate",
)


def repair(config: dict[str, Any], bounds: dict[str, tuple[float, float]]) -> None:
    """Keep PPO's settings consistent after a mutation (in place; values are
    already inside ``bounds``): at least one epoch, and a train batch at least
    twice the minibatch (growing the batch, or if its bound forbids that,
    shrinking the minibatch)."""
    if "num_epochs" in config:
        config["num_epochs"] = max(1, int(config["num_epochs"]))
    if "minibatch_size" in config and "train_batch_size_per_learner" in config:
        minibatch = max(1, int(config["minibatch_size"]))
        batch = max(2, int(config["train_batch_size_per_learner"]))
        if batch < 2 * minibatch:
            upper = bounds.get("train_batch_size_per_learner", (0, float("inf")))[1]
            batch = int(min(2 * minibatch, upper))
            minibatch = min(minibatch, batch // 2)
        config["minibatch_size"] = minibatch
        config["train_batch_size_per_learner"] = batch


def build(experiment) -> TrainableSpec:
    from ray.rllib.algorithms.ppo import PPOConfig
    from pbtflow.trainables.ppo_algorithm import IN_PLACE, PBTPPO, EffectiveValues

    return spec(experiment, PPOConfig(), PRESETS[experiment.preset], trainable=PBTPPO,
                callback=EffectiveValues, logged_metrics=LOGGED_METRICS, smoke=SMOKE_INITIAL,
                repair=repair, in_place=IN_PLACE)
