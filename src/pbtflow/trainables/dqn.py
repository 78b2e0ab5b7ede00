"""RLlib DQN (new API stack) for discrete actions: the laptop preset and the
repair that keeps mutated DQN settings valid. Members start a new actor at
each exploit and copy the donor's replay buffer with its weights
(``rllib_algorithm.PBTDQN``)."""

from __future__ import annotations

from typing import Any

from ray import tune

from pbtflow.trainables import TrainableSpec
from pbtflow.trainables import rllib

# The known-good start is RLlib's tuned CartPole example
# (rllib/tuned_examples/dqn/cartpole_dqn.py: lr 5e-4, batch 32, double and
# dueling Q, n-step returns sampled in [2, 5], prioritised replay, epsilon
# from 1.0 to 0.02 over 10k steps, 256-unit tanh layers). The other members
# start near it.
DISCRETE = {
    "known_good": [
        {"lr": 5e-4, "gamma": 0.99, "train_batch_size_per_learner": 32,
         "target_network_update_freq": 500},
    ],
    "initial": {
        "lr": tune.choice([1e-3, 5e-4, 3e-4]),
        "gamma": tune.choice([0.98, 0.99]),
        "train_batch_size_per_learner": tune.choice([32, 64]),
        "target_network_update_freq": tune.choice([250, 500, 1000]),
    },
    "mutations": {
        "lr": [1e-3, 5e-4, 3e-4, 1e-4, 5e-5],
        "gamma": tune.uniform(0.95, 0.999),
        "train_batch_size_per_learner": [32, 64, 128, 256],
        "target_network_update_freq": [100, 250, 500, 1000, 2000],
    },
    "num_envs_per_env_runner": 1,
    "model_config": {"fcnet_hiddens": [256], "fcnet_activation": "tanh", "fcnet_bias_initializer": "zeros_",
                     "head_fcnet_bias_initializer": "zeros_", "head_fcnet_hiddens": [256]},
}

PRESETS = {"discrete": DISCRETE}

SMOKE_INITIAL = {"train_batch_size_per_learner": 16}  # --smoke (and rllib.OFF_POLICY_SMOKE)

LOGGED_METRICS = (
    "learners/default_policy/qf_loss",
    "learners/default_policy/qf_mean",
    "learners/default_policy/td_error_mean",
    "learners/default_policy/default_optimizer_learning_rate",
    "replay_buffer_timesteps",
)


def repair(config: dict[str, Any], bounds: dict[str, tuple[float, float]]) -> None:
    """Keep DQN's settings valid after a mutation (in place): whole batches
    and target-update periods of at least one, a discount below 1."""
    rllib.keep_valid(config, counts=("train_batch_size_per_learner", "target_network_update_freq"))


def build(experiment) -> TrainableSpec:
    from ray.rllib.algorithms.dqn import DQNConfig

    from pbtflow.trainables.rllib_algorithm import PBTDQN, DQNValues

    config = DQNConfig().training(n_step=(2, 5), double_q=True, dueling=True,
                                  epsilon=[(0, 1.0), (10000, 0.02)])
    config = rllib.off_policy(config, experiment, capacity=50000, learning_starts=1000,
                              alpha=0.6, beta=0.4)
    return rllib.spec(experiment, config, PRESETS[experiment.preset], trainable=PBTDQN,
                      callback=DQNValues, logged_metrics=LOGGED_METRICS, smoke=SMOKE_INITIAL,
                      repair=repair)
