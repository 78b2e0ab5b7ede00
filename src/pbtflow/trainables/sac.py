"""RLlib SAC (new API stack) for continuous actions: the laptop preset and the
repair that keeps mutated SAC settings valid. Members start a new actor at
each exploit and copy the donor's replay buffer with its weights
(``rllib_algorithm.PBTSAC``)."""

from __future__ import annotations

from typing import Any

from ray import tune

from pbtflow.trainables import TrainableSpec
from pbtflow.trainables import rllib

# The known-good start is RLlib's tuned Pendulum example
# (rllib/tuned_examples/sac/pendulum_sac.py: actor lr 2e-4, critic lr 8e-4,
# alpha lr 9e-4, tau 0.005, batch 256, two-step returns sampled in [2, 5],
# prioritised replay, 256x256 relu networks), which reaches -250 on
# Pendulum-v1 in about 20k env steps. The other members start near it.
CONTINUOUS = {
    "known_good": [
        {"actor_lr": 2e-4, "critic_lr": 8e-4, "alpha_lr": 9e-4, "gamma": 0.99, "tau": 0.005,
         "train_batch_size_per_learner": 256},
    ],
    "initial": {
        "actor_lr": tune.choice([1e-4, 2e-4, 3e-4]),
        "critic_lr": tune.choice([3e-4, 8e-4, 1e-3]),
        "alpha_lr": tune.choice([3e-4, 9e-4]),
        "gamma": tune.choice([0.98, 0.99]),
        "tau": tune.choice([0.005, 0.01]),
        "train_batch_size_per_learner": tune.choice([128, 256]),
    },
    "mutations": {
        "actor_lr": [3e-5, 1e-4, 2e-4, 3e-4, 5e-4, 1e-3],
        "critic_lr": [1e-4, 3e-4, 5e-4, 8e-4, 1e-3, 2e-3],
        "alpha_lr": [1e-4, 3e-4, 9e-4, 2e-3],
        "gamma": tune.uniform(0.95, 0.999),
        "tau": tune.uniform(0.001, 0.02),
        "train_batch_size_per_learner": [64, 128, 256, 512],
    },
    "num_envs_per_env_runner": 1,
    "model_config": {"fcnet_hiddens": [256, 256], "fcnet_activation": "relu", "head_fcnet_hiddens": []},
}

PRESETS = {"continuous": CONTINUOUS}

SMOKE_INITIAL = {"train_batch_size_per_learner": 32}  # --smoke (and rllib.OFF_POLICY_SMOKE)

LOGGED_METRICS = (
    "learners/default_policy/policy_loss",
    "learners/default_policy/qf_loss",
    "learners/default_policy/alpha_loss",
    "learners/default_policy/alpha_value",
    "learners/default_policy/qf_mean",
    "learners/default_policy/td_error_mean",
    "learners/default_policy/policy_learning_rate",
    "learners/default_policy/qf_learning_rate",
    "learners/default_policy/alpha_learning_rate",
    "replay_buffer_timesteps",
)


def repair(config: dict[str, Any], bounds: dict[str, tuple[float, float]]) -> None:
    """Keep SAC's settings valid after a mutation (in place): a whole batch of
    at least one, a soft-update rate in (0, 1], a discount below 1."""
    rllib.keep_valid(config, counts=("train_batch_size_per_learner",), rates=("tau",))


def build(experiment) -> TrainableSpec:
    from ray.rllib.algorithms.sac import SACConfig

    from pbtflow.trainables.rllib_algorithm import PBTSAC, SACValues

    config = SACConfig().training(initial_alpha=1.001, lr=None, target_entropy="auto", n_step=(2, 5),
                                  target_network_update_freq=1)
    config = rllib.off_policy(config.reporting(metrics_num_episodes_for_smoothing=5), experiment,
                              capacity=100000, learning_starts=256, alpha=1.0, beta=0.0)
    return rllib.spec(experiment, config, PRESETS[experiment.preset], trainable=PBTSAC,
                      callback=SACValues, logged_metrics=LOGGED_METRICS, smoke=SMOKE_INITIAL,
                      repair=repair)
