"""What every RLlib algorithm pbtflow tunes shares: the config built from the
experiment's settings (environment, env runners, learner resources, seed),
the starting points of the first members, the check of search-space keys
against RLlib's own config, the metrics every RLlib result has, and any other
online RLlib algorithm by its registry name, its search space given by the
user (``initial:`` and ``mutations:`` in YAML)."""

from __future__ import annotations

import difflib
import logging
import math
from typing import Any, Mapping

from ray.tune.search.sample import Domain

from pbtflow import names
from pbtflow.experiment import SettingError
from pbtflow.pbt import check_initial_in_range, check_mutations
from pbtflow.trainables import TrainableSpec

log = logging.getLogger(__name__)

EPISODES_THIS_ITER = "env_runners/num_episodes"

# Every RLlib result has these; each algorithm adds its learner's own.
ENV_RUNNER_METRICS = (
    names.RETURN_MEAN,
    "env_runners/episode_return_max",
    "env_runners/episode_return_min",
    "env_runners/episode_len_mean",
    EPISODES_THIS_ITER,
    "env_runners/num_env_steps_sampled_lifetime",
    "env_runners/num_env_steps_sampled_lifetime_throughput",
)
TIME_METRICS = ("time_this_iter_s", "time_total_s", names.TRAINING_ITERATION)


def mean_std_filter(env, spaces, device):
    """RLlib's running observation normaliser, as an env-to-module connector
    (its statistics are part of the checkpoint, so an exploit copies them)."""
    from ray.rllib.connectors.env_to_module.mean_std_filter import MeanStdFilter

    return MeanStdFilter()


def episodes_averaged(config) -> int:
    """The most episodes of one iteration that RLlib 2.60's mean return takes:
    each env runner averages its latest ``metrics_num_episodes_for_smoothing /
    num_env_runners`` (rounded up), and the runners' means are averaged (so
    with several runners the mean is over their episodes only roughly)."""
    runners = max(1, config.num_env_runners or 0)
    return max(1, math.ceil(config.metrics_num_episodes_for_smoothing / runners)) * runners


def no_episode_finished(flat_result: dict) -> bool:
    """No episode ended in this iteration, so there may be no return yet:
    long episodes outlast the first small batches, and the first iteration of
    a restored member has nothing to repeat (see ``rllib_algorithm.episode_stats``)."""
    return not flat_result.get(EPISODES_THIS_ITER)


def configure(config, experiment, *, envs: int, observation_filter: bool = False,
              model_config: Mapping[str, Any] | None = None):
    """``config`` (an RLlib AlgorithmConfig) with the experiment's environment,
    env runners, learner resources and seed."""
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    config = (
        config.environment(experiment.env)
        .env_runners(num_env_runners=experiment.num_env_runners,
                     num_cpus_per_env_runner=experiment.cpus_per_env_runner,
                     num_envs_per_env_runner=envs,
                     env_to_module_connector=mean_std_filter if observation_filter else None)
        .learners(num_gpus_per_learner=experiment.gpus_per_trial,
                  num_cpus_per_learner=experiment.cpus_per_trial_process)
        .resources(num_cpus_for_main_process=experiment.cpus_per_trial_process)
        .debugging(seed=experiment.seed)
    )
    if model_config is not None:
        config = config.rl_module(model_config=DefaultModelConfig(**model_config))
    return config


def search_space(experiment, preset: Mapping[str, Any], smoke: Mapping[str, Any]):
    """The members' starting values, the first members' known-good points and
    the mutations, from a preset (``initial``, ``known_good``, ``mutations``)
    and what the user gave: the user's initial values win, the known-good
    points keep only what the user left unset, and only in the preset's own
    search space (not when the user gave mutations); ``smoke`` shrinks the
    rest for --smoke."""
    users = experiment.initial or {}
    initial = dict(preset.get("initial", {}))
    points = [dict(p) for p in preset.get("known_good", [])] if experiment.mutations is None else []
    if experiment.smoke:
        initial.update(smoke)
        for point in points:
            point.update({k: v for k, v in smoke.items() if not isinstance(v, Domain)})
    initial.update(users)
    points = [{k: v for k, v in p.items() if k not in users} for p in points]
    points = [p for p in points if p][:experiment.population]
    if experiment.mutations is None and not preset.get("mutations"):
        raise SettingError(
            f"mutations: pbtflow has no search space for {experiment.trainable!r}; give the "
            "hyperparameters to mutate under mutations: (and their starting values under "
            "initial:) in a YAML file passed with --config.")
    mutations = check_mutations(experiment.mutations if experiment.mutations is not None
                                else preset["mutations"])
    check_initial_in_range(users, mutations)
    return initial, points, mutations


def check_keys(config, keys, source: str) -> None:
    """Every hyperparameter named in ``source`` (initial or mutations) is a key
    of RLlib's config for the algorithm; else one sentence with the closest
    valid key, before Ray starts."""
    valid = set(config.to_dict())
    valid |= {k.lstrip("_") for k in valid}  # what to_dict() calls _train_batch_size_per_learner
    for key in keys:
        if key not in valid:
            close = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.5)
            hint = (f"did you mean {close[0]!r}?" if close
                    else f"see the settings of {type(config).__name__} in RLlib's documentation")
            raise SettingError(f"{source}.{key}: RLlib's {type(config).__name__} has no setting "
                               f"{key!r}; {hint}")


def spec(experiment, config, preset: Mapping[str, Any], *, trainable, callback, logged_metrics,
         smoke: Mapping[str, Any] = {}, repair=None, in_place: frozenset | None = None) -> TrainableSpec:
    """The spec of an RLlib algorithm: ``config`` is RLlib's config with the
    preset's constants, ``preset`` its search space, envs per env runner,
    observation filter and model; ``in_place`` the config keys a live actor can
    change (PPO's), so that members differing only in them reuse their actors."""
    initial, points, mutations = search_space(experiment, preset, smoke)
    for source, keys in (("initial", experiment.initial or {}), ("mutations", mutations)):
        check_keys(config, keys, source)
    # --smoke samples one env at a time, so that its few small batches still
    # finish episodes (Pendulum's last 200 steps).
    envs = experiment.num_envs_per_env_runner or (1 if experiment.smoke
                                                  else preset.get("num_envs_per_env_runner", 1))
    config = configure(config, experiment, envs=envs,
                       observation_filter=preset.get("observation_filter", False),
                       model_config=preset.get("model_config")).callbacks(callback)
    param_space = config.to_dict()
    param_space.update(initial)
    algorithm = type(config).__name__.removesuffix("Config")
    varying = set(mutations) | {k for p in points for k in p} | {
        k for k, v in initial.items() if isinstance(v, Domain)}
    reuse = in_place is not None and varying <= in_place
    if in_place is None:
        log.info("pbtflow: %s members start a new actor at each exploit (only PPO's actor is reset "
                 "in place).", algorithm)
    elif not reuse:
        log.info("pbtflow: members differ in %s, which a live %s actor cannot change, so each "
                 "exploit starts a new actor.", ", ".join(sorted(varying - in_place)), algorithm)
    return TrainableSpec(
        trainable=trainable,
        param_space=param_space,
        metric=names.RETURN_MEAN,
        mutations=mutations,
        hyperparameters=tuple(initial),
        repair=repair,
        logged_metrics=ENV_RUNNER_METRICS + tuple(logged_metrics) + TIME_METRICS,
        reuse_actors=reuse,
        points_to_evaluate=points or None,
        metric_pending=no_episode_finished,
        episodes_key=EPISODES_THIS_ITER,
        episodes_cap=episodes_averaged(config),
    )


# Off-policy algorithms (SAC, DQN) under --smoke: iterations of 200 env steps,
# learning from the 64th, a small replay buffer.
OFF_POLICY_SMOKE = {"min_sample_timesteps_per_iteration": 200,
                    "num_steps_sampled_before_learning_starts": 64, "capacity": 5000}


def off_policy(config, experiment, *, capacity: int, learning_starts: int, alpha: float, beta: float):
    """``config`` (SAC's or DQN's) with a prioritised episode replay buffer,
    the env steps sampled before learning starts and per iteration; --smoke
    shrinks all three (``OFF_POLICY_SMOKE``)."""
    smoke = OFF_POLICY_SMOKE if experiment.smoke else {}
    return config.training(
        replay_buffer_config={"type": "PrioritizedEpisodeReplayBuffer",
                              "capacity": smoke.get("capacity", capacity), "alpha": alpha, "beta": beta},
        num_steps_sampled_before_learning_starts=smoke.get(
            "num_steps_sampled_before_learning_starts", learning_starts),
    ).reporting(min_sample_timesteps_per_iteration=smoke.get("min_sample_timesteps_per_iteration", 1000))


def keep_valid(config: dict[str, Any], *, counts: tuple[str, ...] = (), rates: tuple[str, ...] = ()) -> None:
    """Keep mutated settings valid (in place): ``counts`` whole and at least
    one, ``rates`` in (0, 1], a discount below 1."""
    for key in counts:
        if key in config:
            config[key] = max(1, int(config[key]))
    for key in rates:
        if key in config:
            config[key] = min(1.0, max(1e-6, float(config[key])))
    if "gamma" in config:
        config["gamma"] = min(0.9999, float(config["gamma"]))


def build(experiment) -> TrainableSpec:
    """Any other online RLlib algorithm by name (e.g. ``appo``), with the search
    space the user gives and RLlib's own defaults for the rest."""
    from ray.rllib.algorithms.registry import ALGORITHMS

    from pbtflow.trainables import rllib_name
    from pbtflow.trainables.rllib_algorithm import EpisodeStats

    algo, config = ALGORITHMS[rllib_name(experiment.trainable)]()
    return spec(experiment, config, {}, trainable=algo, callback=EpisodeStats,
                logged_metrics=("learners/default_policy/total_loss",))
