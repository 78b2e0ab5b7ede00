"""What can be tuned. Each built-in trainable is a module with a ``build``
function that turns an experiment into a :class:`TrainableSpec`: RLlib's PPO,
SAC and DQN with their presets, any other online RLlib algorithm by its
registry name with the user's search space, toys, and a user's own trainable
loaded from "package.module:function" or "package.module:Class"."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from pbtflow import names

# Built-in names -> modules, imported only when used (RLlib is heavy).
BUILTIN = {
    "ppo": "pbtflow.trainables.ppo",
    "sac": "pbtflow.trainables.sac",
    "dqn": "pbtflow.trainables.dqn",
    "lr-schedule": "pbtflow.trainables.lr_schedule",
    "quadratic": "pbtflow.trainables.quadratic",
}

# RLlib's online algorithms (its registry, without offline RL); those without a
# module above take the user's search space (pbtflow.trainables.rllib).
RLLIB_ALGORITHMS = ("APPO", "DQN", "DreamerV3", "IMPALA", "PPO", "SAC")

# The search-space presets of each RLlib trainable with its own: the action
# spaces they are made for ('auto' picks by the environment's).
RLLIB_PRESETS = {"ppo": ("discrete", "continuous", "cluster"), "sac": ("continuous",),
                 "dqn": ("discrete",)}


def rllib_name(trainable: str) -> str | None:
    """RLlib's registry name when ``trainable`` names an RLlib algorithm (in any case)."""
    return {n.lower(): n for n in RLLIB_ALGORITHMS}.get(trainable.lower())


# What every RLlib trainable shares: the mean episode return is the metric, a
# population of 4, and the top 3 members evaluated on 20 fresh episodes.
RLLIB_COMMON: dict[str, Any] = {
    "metric": names.RETURN_MEAN, "population": 4, "time_attr": "training_iteration",
    "quantile_fraction": 0.25, "resample_probability": 0.25, "synch": False,
    "eval_top": 3, "eval_episodes": 20,
}

# Experiment settings each trainable brings as its preset; a setting the user
# leaves unset (None) takes the value here. "custom" is a user's own trainable.
# Every built-in trainable's metric is maximised.
DEFAULTS: dict[str, dict[str, Any]] = {
    # Perturbation every 10 iterations: a PPO return over fewer episodes is
    # mostly noise (every 3 on Pendulum-v1 copied away the known-good member
    # at its 3rd iteration and took 409 s to -300; every 10: 104 s).
    "ppo": {**RLLIB_COMMON, "env": "CartPole-v1", "stop_iters": 100, "stop_return": 450.0,
            "perturbation_interval": 10},
    # An SAC iteration samples 1000 env steps (5 Pendulum episodes) with one
    # update of the batch per step; RLlib's tuned Pendulum SAC reaches -250
    # in about 20k steps.
    "sac": {**RLLIB_COMMON, "env": "Pendulum-v1", "stop_iters": 50, "stop_return": None,
            "perturbation_interval": 5},
    # A DQN iteration samples 1000 env steps (RLlib's default).
    "dqn": {**RLLIB_COMMON, "env": "CartPole-v1", "stop_iters": 100, "stop_return": 450.0,
            "perturbation_interval": 5},
    # Any other RLlib algorithm by name.
    "rllib": {**RLLIB_COMMON, "env": "CartPole-v1", "stop_iters": 100, "stop_return": None,
              "perturbation_interval": 10},
    # Ray's PBT function example; each member stops itself when `done`.
    "lr-schedule": {
        "population": 8, "stop_iters": 1000, "stop_return": None, "metric": names.MEAN_ACCURACY,
        "time_attr": "training_iteration", "perturbation_interval": 5,
        "quantile_fraction": 0.25, "resample_probability": 0.25, "synch": False,
    },
    # The PBT paper's Figure 2.
    "quadratic": {
        "population": 2, "stop_iters": 100, "stop_return": None, "metric": names.Q,
        "time_attr": "training_iteration", "perturbation_interval": 4,
        "quantile_fraction": 0.5, "resample_probability": 0.5, "synch": True,
    },
    "custom": {
        "population": 4, "stop_iters": 100, "stop_return": None,
        "time_attr": "training_iteration", "perturbation_interval": 5,
        "quantile_fraction": 0.25, "resample_probability": 0.25, "synch": False,
    },
}


@dataclass
class TrainableSpec:
    """Everything Ray Tune and the tracking code need to know about a trainable."""

    trainable: Any  # what tune.Tuner receives: a registered name, a class or a function
    param_space: dict[str, Any]
    metric: str
    mutations: dict[str, Any]
    hyperparameters: tuple[str, ...] = ()  # initial keys logged as params (besides the mutated)
    repair: Callable[[dict, dict], None] | None = None  # fixes what a mutation can break
    logged_metrics: tuple[str, ...] | None = None  # None: every numeric result field
    reuse_actors: bool = True
    function: bool = False  # a function trainable: it reports its own checkpoints
    # Starting configs of the first members (the rest sample param_space).
    points_to_evaluate: list[dict[str, Any]] | None = None
    # Whether a result (flattened with "/") may still lack the metric for a
    # good reason, e.g. no RL episode has finished yet.
    metric_pending: Callable[[dict], bool] | None = None
    # The result field (flattened) that counts the episodes that ended in this
    # result, if the metric is a mean over them (RLlib's return), and how many
    # of them (the latest) the mean takes at most: --stop-episodes.
    episodes_key: str | None = None
    episodes_cap: int | None = None


def build(experiment) -> TrainableSpec:
    """The spec for ``experiment.trainable``; a "package.module:function" is
    imported and checked here, before Ray starts."""
    name = BUILTIN.get(experiment.trainable) or (
        "pbtflow.trainables.rllib" if rllib_name(experiment.trainable) else "pbtflow.trainables.function")
    return importlib.import_module(name).build(experiment)


def defaults_for(trainable: str) -> dict[str, Any]:
    """The preset settings of a trainable (built-in, RLlib by name, or the user's)."""
    return DEFAULTS.get(trainable) or DEFAULTS["rllib" if rllib_name(trainable) else "custom"]
