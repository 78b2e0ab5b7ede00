"""RLlib PPO (new API stack) on any gymnasium environment: the search-space
presets and the repair that keeps mutated PPO settings consistent. This is the
only module that imports ``ray.rllib``."""

from __future__ import annotations

from typing import Any

from ray import tune

from pbtflow import names
from pbtflow.pbt import check_initial_in_range, check_mutations
from pbtflow.trainables import TrainableSpec

LR_STEPS = [1e-3, 5e-4, 1e-4, 5e-5, 1e-5]  # adjacent moves under PBT

# DESIGN.md's reference space (cluster scale). Keys are RLlib config keys.
CLUSTER = {
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
        "lr": LR_STEPS,
        "num_epochs": tune.randint(1, 31),
        "minibatch_size": tune.randint(128, 16385),
        "train_batch_size_per_learner": tune.randint(2000, 160001),
    },
}

# The same space with batches scaled down so that a population of 4 learns
# CartPole in minutes on 2 CPU cores.
LAPTOP = {
    "initial": {
        "lambda": 0.95,
        "clip_param": 0.2,
        "lr": tune.choice([1e-3, 5e-4, 1e-4]),
        "num_epochs": tune.choice([5, 10, 15]),
        "minibatch_size": tune.choice([128, 256]),
        "train_batch_size_per_learner": tune.choice([1000, 2000]),
        "kl_coeff": 1.0,
    },
    "mutations": {
        "lambda": tune.uniform(0.9, 1.0),
        "clip_param": tune.uniform(0.01, 0.5),
        "lr": LR_STEPS,
        "num_epochs": tune.randint(1, 31),
        "minibatch_size": tune.randint(32, 1025),
        "train_batch_size_per_learner": tune.randint(500, 8001),
    },
}

# --smoke: tiny batches, so that an iteration takes about a second.
SMOKE_INITIAL = {
    "lr": tune.choice([1e-3, 5e-4]),
    "num_epochs": 4,
    "minibatch_size": 64,
    "train_batch_size_per_learner": 256,
}

EPISODES_LIFETIME = "env_runners/num_episodes_lifetime"

# A curated set: one PPO result has ~96 numeric keys and Azure ML's MLflow
# caps metric names per run, so never log the whole result.
LOGGED_METRICS = (
    names.RETURN_MEAN,
    "env_runners/episode_return_max",
    "env_runners/episode_return_min",
    "env_runners/episode_len_mean",
    "env_runners/num_episodes",
    "env_runners/num_env_steps_sampled_lifetime",
    "env_runners/num_env_steps_sampled_lifetime_throughput",
    "learners/default_policy/policy_loss",
    "learners/default_policy/vf_loss",
    "learners/default_policy/total_loss",
    "learners/default_policy/mean_kl_loss",
    "learners/default_policy/entropy",
    "learners/default_policy/curr_kl_coeff",
    "learners/default_policy/default_optimizer_learning_rate",
    "time_this_iter_s",
    "time_total_s",
    names.TRAINING_ITERATION,
)


def _effective_values_callback():
    from ray.rllib.callbacks.callbacks import RLlibCallback

    class EffectiveValues(RLlibCallback):
        """Reports the values the learner really trains with, so that tracking
        can check them against what PBT set (a restored checkpoint has been
        known to override perturbed values: ray issues 62173, 35640)."""

        def on_train_result(self, *, algorithm, metrics_logger=None, result, **kwargs):
            learner = getattr(algorithm.learner_group, "_learner", None)
            config = learner.config if learner is not None else algorithm.config
            module = config.get_config_for_module("default_policy")
            effective = {
                "clip_param": module.clip_param,
                "lambda": module.lambda_,
                "num_epochs": algorithm.config.num_epochs,
                "minibatch_size": algorithm.config.minibatch_size,
                "train_batch_size_per_learner": algorithm.config.train_batch_size_per_learner,
            }
            lr = result.get("learners", {}).get("default_policy", {}).get(
                "default_optimizer_learning_rate")  # read from the optimizer itself
            if lr is not None:
                effective["lr"] = lr
            result["effective"] = effective

    return EffectiveValues


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

    preset = CLUSTER if experiment.preset == "cluster" else LAPTOP
    initial = dict(preset["initial"])
    if experiment.smoke:
        initial.update(SMOKE_INITIAL)
    initial.update(experiment.initial or {})
    mutations = check_mutations(experiment.mutations if experiment.mutations is not None
                                else preset["mutations"])
    check_initial_in_range(experiment.initial or {}, mutations)

    config = (
        PPOConfig()
        .environment(experiment.env)
        .env_runners(num_env_runners=experiment.num_env_runners,
                     num_cpus_per_env_runner=experiment.cpus_per_env_runner)
        .learners(num_gpus_per_learner=experiment.gpus_per_trial,
                  num_cpus_per_learner=experiment.cpus_per_trial_process)
        .resources(num_cpus_for_main_process=experiment.cpus_per_trial_process)
        .debugging(seed=experiment.seed)
        .callbacks(_effective_values_callback())
    )
    param_space = config.to_dict()
    param_space.update(initial)
    return TrainableSpec(
        trainable="PPO",
        param_space=param_space,
        metric=names.RETURN_MEAN,
        mutations=mutations,
        hyperparameters=tuple(initial),
        repair=repair,
        logged_metrics=LOGGED_METRICS,
        # An RLlib Algorithm cannot reset its config in place; Tune would
        # restart the actor anyway.
        reuse_actors=False,
        tags={"env": experiment.env},
        metric_pending=no_episode_finished,
    )


def no_episode_finished(flat_result: dict) -> bool:
    """RLlib leaves the episode return out of its results until the first
    episode ends: long episodes outlast the first small batches."""
    return not flat_result.get(EPISODES_LIFETIME)
