"""PPO's presets by problem type: picked from the environment's action space,
overridable, and valid for RLlib (its own ``PPOConfig.validate``) at the known
good starting points, at sampled starting points, and after any mutation the
explore function can produce."""

import random

import gymnasium
import numpy as np
import pytest
from ray import tune
from ray.rllib.algorithms.ppo import PPOConfig
from ray.tune.search.sample import Domain

from pbtflow.experiment import Experiment, ExperimentError
from pbtflow.pbt import bounds_of, check_mutations, flatten_keys
from pbtflow.trainables import build
from pbtflow.trainables.ppo import PRESETS, repair
from pbtflow.trainables.rllib import mean_std_filter
from preset_checks import explored_configs, rllib_config

ENVS = {"CartPole-v1": "discrete", "Acrobot-v1": "discrete", "LunarLander-v3": "discrete",
        "Pendulum-v1": "continuous", "MountainCarContinuous-v0": "continuous"}


@pytest.mark.parametrize("env, kind", ENVS.items())
def test_the_preset_follows_the_action_space(env, kind):
    assert Experiment(env=env).preset == kind


@pytest.mark.parametrize("preset", ["discrete", "continuous", "cluster"])
def test_a_preset_the_user_names_is_kept(preset):
    assert Experiment(env="Pendulum-v1", preset=preset).preset == preset


class DictActionsEnv(gymnasium.Env):
    """An environment whose actions are a Dict: neither PPO preset covers it."""

    def __init__(self, **kwargs):
        self.observation_space = gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = gymnasium.spaces.Dict({"a": gymnasium.spaces.Discrete(2)})


def test_an_action_space_no_preset_covers_names_the_fix():
    gymnasium.register("pbtflow-test/DictActions-v0", entry_point=DictActionsEnv)
    with pytest.raises(ExperimentError, match="preset: .*Dict action space.*--preset"):
        Experiment(env="pbtflow-test/DictActions-v0")
    assert Experiment(env="pbtflow-test/DictActions-v0", preset="cluster").preset == "cluster"


@pytest.mark.parametrize("env", ["CartPole-v1", "Pendulum-v1"])
@pytest.mark.parametrize("preset", ["discrete", "continuous", "cluster"])
def test_every_preset_builds_a_valid_rllib_config(env, preset):
    spec = build(Experiment(env=env, preset=preset))
    rng = random.Random(0)
    sampled = {k: v.sample(random_state=rng.randint(0, 10**6)) if isinstance(v, Domain) else v
               for k, v in spec.param_space.items() if k in spec.hyperparameters}
    for point in (spec.points_to_evaluate or []) + [sampled]:
        config = rllib_config(PPOConfig, spec.param_space, point)
        assert config.env == env
        assert config.num_envs_per_env_runner == PRESETS[preset]["num_envs_per_env_runner"]
        assert (config._env_to_module_connector is mean_std_filter) == PRESETS[preset]["observation_filter"]
        assert config.model_config["fcnet_activation"] == PRESETS[preset]["model_config"]["fcnet_activation"]
    assert len(spec.points_to_evaluate or []) == len(PRESETS[preset]["known_good"])


@pytest.mark.parametrize("preset", ["discrete", "continuous"])
def test_the_first_members_start_from_the_known_good_configs(preset):
    spec = build(Experiment(env="CartPole-v1", preset=preset))
    assert spec.points_to_evaluate == PRESETS[preset]["known_good"]
    mutations = check_mutations(PRESETS[preset]["mutations"])
    for point in spec.points_to_evaluate:  # inside the search space PBT explores
        assert set(point) == set(flatten_keys(mutations))
        for key, value in point.items():
            low, high, _ = bounds_of(mutations[key])
            assert low <= value <= high, (key, value)


def test_the_search_space_holds_what_matters_for_ppo():
    for preset in ("discrete", "continuous"):
        assert {"gamma", "lambda", "lr", "clip_param", "entropy_coeff", "vf_loss_coeff", "num_epochs",
                "minibatch_size", "train_batch_size_per_learner"} <= set(PRESETS[preset]["mutations"])


def test_what_the_user_set_beats_the_known_good_start():
    spec = build(Experiment(env="Pendulum-v1", initial={"lr": 1e-3, "gamma": 0.99},
                            num_envs_per_env_runner=4))
    assert spec.param_space["lr"] == 1e-3 and spec.param_space["gamma"] == 0.99
    assert spec.param_space["num_envs_per_env_runner"] == 4
    (point,) = spec.points_to_evaluate
    assert "lr" not in point and "gamma" not in point and point["lambda"] == 0.1
    # The user's own search space: the preset's starting points do not apply.
    own = build(Experiment(env="Pendulum-v1", mutations={"lr": [1e-3, 1e-4]}))
    assert own.points_to_evaluate is None


def test_smoke_keeps_its_small_batches_at_the_known_good_start():
    spec = build(Experiment(env="CartPole-v1", smoke=True))
    assert spec.param_space["num_envs_per_env_runner"] == 1
    for point in spec.points_to_evaluate:
        assert point["train_batch_size_per_learner"] == 256 and point["minibatch_size"] == 64
        rllib_config(PPOConfig, spec.param_space, point)


@pytest.mark.parametrize("preset", ["discrete", "continuous", "cluster"])
def test_every_mutation_stays_valid_after_the_repair(preset):
    spec = build(Experiment(env="CartPole-v1", preset=preset))
    mutations = check_mutations(PRESETS[preset]["mutations"])
    start = spec.points_to_evaluate[0] if spec.points_to_evaluate else {}
    for fixed in explored_configs(mutations, repair, start, trials=200):
        rllib_config(PPOConfig, spec.param_space, fixed)


def test_an_iteration_that_ends_no_episode_repeats_the_last_return():
    """RLlib's stream for 20 vectorised Pendulum envs: episodes end together
    every fourth iteration, NaN in between."""
    from pbtflow.trainables.rllib_algorithm import episode_stats

    class Callback:
        pass

    callback, nan = Callback(), float("nan")
    stream = [{}, {"episode_return_mean": -1203.0, "episode_return_max": -900.0, "num_episodes": 20},
              {"episode_return_mean": nan, "episode_return_max": nan, "num_episodes": 0},
              {"episode_return_mean": -1135.0, "episode_return_max": -800.0, "num_episodes": 20}]
    seen = []
    for runners in stream:
        result = {"env_runners": dict(runners)}
        episode_stats(callback, result)
        seen.append((result["env_runners"].get("episode_return_mean"),
                     result["env_runners"].get("episode_return_max")))
    assert seen == [(None, None), (-1203.0, -900.0), (-1203.0, -900.0), (-1135.0, -800.0)]
    fresh = {"env_runners": {"episode_return_mean": nan, "num_episodes": 0}}
    episode_stats(Callback(), fresh)  # a member just restored: nothing to repeat
    assert "episode_return_mean" not in fresh["env_runners"]


@pytest.mark.parametrize("preset", ["discrete", "continuous", "cluster"])
def test_members_share_actors_unless_they_differ_in_what_a_live_actor_cannot_change(preset):
    assert build(Experiment(env="CartPole-v1", preset=preset)).reuse_actors
    varied = Experiment(env="CartPole-v1", preset=preset,
                        initial={"num_envs_per_env_runner": tune.choice([1, 2])})
    assert not build(varied).reuse_actors  # each member builds its own env runners
