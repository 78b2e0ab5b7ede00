"""RLlib's SAC and DQN with their presets, and any other online RLlib
algorithm by name: configs RLlib itself validates at the known-good start, at
sampled starts and after any mutation the explore function can produce; bad
input refused before Ray starts; and (slow) end to end on real environments,
the record checked against Ray's PBT log, the learner's values against PBT's
and the replay buffer copied with the weights at each exploit."""

import random

import pytest
from mlflow.tracking import MlflowClient
from ray.rllib.algorithms.appo import APPO
from ray.rllib.algorithms.dqn import DQNConfig
from ray.rllib.algorithms.sac import SACConfig
from ray.tune.search.sample import Domain

import pbtflow
from pbtflow import names
from pbtflow.experiment import Experiment, SettingError
from pbtflow.pbt import bounds_of, check_mutations
from pbtflow.trainables import build, dqn, sac
from pbtflow.trainables.rllib import OFF_POLICY_SMOKE
from pbtflow.trainables.rllib_algorithm import PBTDQN, PBTSAC, REPLAY_TIMESTEPS
from mlflow_checks import assert_policy_plays_as_evaluated, assert_record_is_true, runs_by_role
from preset_checks import explored_configs, rllib_config


ALGORITHMS = {
    "sac": (sac, SACConfig, PBTSAC, "Pendulum-v1", "continuous"),
    "dqn": (dqn, DQNConfig, PBTDQN, "CartPole-v1", "discrete"),
}


@pytest.mark.parametrize("name", ALGORITHMS)
def test_the_preset_builds_a_valid_rllib_config(name):
    module, config_cls, algorithm, env, kind = ALGORITHMS[name]
    experiment = Experiment(trainable=name)
    assert (experiment.env, experiment.preset) == (env, kind)
    spec = build(experiment)
    assert spec.trainable is algorithm and spec.reuse_actors is False
    preset = module.PRESETS[kind]
    assert spec.points_to_evaluate == preset["known_good"]
    rng = random.Random(0)
    sampled = {k: v.sample(random_state=rng.randint(0, 10**6)) if isinstance(v, Domain) else v
               for k, v in spec.param_space.items() if k in spec.hyperparameters}
    for point in spec.points_to_evaluate + [sampled]:
        config = rllib_config(config_cls, spec.param_space, point)
        assert config.env == env
        assert config.model_config["fcnet_hiddens"] == preset["model_config"]["fcnet_hiddens"]
        for key, value in point.items():
            assert getattr(config, key) == pytest.approx(value), key
    mutations = check_mutations(preset["mutations"])
    for point in spec.points_to_evaluate:  # inside the search space PBT explores
        for key, value in point.items():
            low, high, _ = bounds_of(mutations[key])
            assert low <= value <= high, (key, value)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_every_mutation_stays_valid_after_the_repair(name):
    module, config_cls, _, _, kind = ALGORITHMS[name]
    spec = build(Experiment(trainable=name))
    mutations = check_mutations(module.PRESETS[kind]["mutations"])
    for fixed in explored_configs(mutations, module.repair, spec.points_to_evaluate[0], trials=100):
        validated = rllib_config(config_cls, spec.param_space, fixed)
        for key in mutations:
            assert getattr(validated, key) == pytest.approx(fixed[key]), key


@pytest.mark.parametrize("name", ALGORITHMS)
def test_what_the_user_sets_beats_the_preset_and_smoke(name):
    module, config_cls, _, _, _ = ALGORITHMS[name]
    spec = build(Experiment(trainable=name, smoke=True, initial={"gamma": 0.97},
                            num_envs_per_env_runner=2))
    assert spec.param_space["gamma"] == 0.97 and spec.param_space["num_envs_per_env_runner"] == 2
    (point,) = spec.points_to_evaluate
    assert "gamma" not in point
    assert point["train_batch_size_per_learner"] == module.SMOKE_INITIAL["train_batch_size_per_learner"]
    assert rllib_config(config_cls, spec.param_space, point).gamma == 0.97
    own = build(Experiment(trainable=name, mutations={"gamma": [0.9, 0.99]}))
    assert own.points_to_evaluate is None and set(own.mutations) == {"gamma"}


@pytest.mark.parametrize("settings, words", [
    ({"trainable": "sac", "env": "CartPole-v1"}, "env: 'CartPole-v1' has discrete actions, but SAC"),
    ({"trainable": "dqn", "env": "Pendulum-v1"}, "env: 'Pendulum-v1' has continuous actions, but DQN"),
    ({"trainable": "sac", "preset": "discrete"}, "preset: SAC's presets are continuous"),
    ({"trainable": "appo", "preset": "discrete", "mutations": {"lr": [1e-3, 1e-4]}},
     "preset: appo has no pbtflow presets"),
])
def test_an_algorithm_on_the_wrong_problem_names_the_fix(settings, words):
    with pytest.raises(SettingError, match="^" + words.replace("(", r"\(")):
        Experiment(**settings)


@pytest.mark.parametrize("settings, words", [
    ({"trainable": "appo"}, "mutations: pbtflow has no search space for 'appo'"),
    ({"trainable": "sac", "initial": {"actor_learning_rate": 1e-3}}, "did you mean 'actor_lr'?"),
    ({"trainable": "ppo", "mutations": {"lamda": [0.9, 0.95]}}, "mutations.lamda: RLlib's PPOConfig"),
    ({"trainable": "impala", "mutations": {"lr": [1e-3, 1e-4]}, "initial": {"vtrace_clip": 1}},
     "did you mean 'vtrace'?"),
])
def test_a_search_space_rllib_cannot_take_fails_before_ray(settings, words):
    with pytest.raises(SettingError, match=words.replace("(", r"\(").replace("?", r"\?")):
        build(Experiment(**settings))


def test_another_rllib_algorithm_by_name_takes_the_users_search_space():
    experiment = Experiment(trainable="APPO", mutations={"lr": [1e-3, 5e-4, 1e-4]},
                            initial={"lr": 5e-4, "vtrace": True})
    assert experiment.trainable == "appo" and experiment.env == "CartPole-v1"
    spec = build(experiment)
    assert spec.trainable is APPO and spec.reuse_actors is False
    assert spec.param_space["lr"] == 5e-4 and spec.param_space["env"] == "CartPole-v1"
    assert spec.metric == names.RETURN_MEAN and spec.points_to_evaluate is None
    assert "env" in experiment.applicable_settings()


# -- end to end ----------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ALGORITHMS)
def test_pbt_on_an_off_policy_algorithm_keeps_a_true_record(ray_runtime, tmp_path, name):
    """Synchronous smoke PBT (2 members exploit at every interval): the record
    agrees with Ray's PBT log; the learner trains with PBT's values after every
    exploit (effective/* equal hp/* at every step); and an exploiting member
    learns from its donor's replay buffer: the buffer holds every env step the
    member's lineage sampled (RLlib's own lifetime count, restored from the
    donor's checkpoint), where an emptied buffer would hold one iteration's."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = pbtflow.Experiment(trainable=name, smoke=True, synch=True, seed=0, eval_episodes=10,
                                    experiment_name=name, tracking_uri=uri,
                                    storage_path=str(tmp_path / "results"))
    results = pbtflow.tune(experiment)
    assert results.num_errors == 0
    client = MlflowClient(uri)
    parents, children = runs_by_role(client, name)
    assert assert_record_is_true(client, parents[0].info.run_id, results)["exploits"] >= 1
    mutated = parents[0].data.params["mutated_hyperparameters"].split(",")
    capacity = OFF_POLICY_SMOKE["capacity"]
    for child in children:
        for key in mutated:
            wanted = {m.step: m.value for m in client.get_metric_history(child.info.run_id, "hp/" + key)}
            used = client.get_metric_history(child.info.run_id, names.EFFECTIVE_PREFIX + key)
            assert len(used) == len(wanted), key
            for m in used:
                assert m.value == pytest.approx(wanted[m.step], rel=1e-6), (child.info.run_name, key, m.step)
        sampled = {m.step: m.value for m in client.get_metric_history(
            child.info.run_id, "env_runners/num_env_steps_sampled_lifetime")}
        buffered = client.get_metric_history(child.info.run_id, REPLAY_TIMESTEPS)
        assert len(buffered) == len(sampled)
        for m in buffered:
            assert m.value == min(capacity, sampled[m.step]), (child.info.run_name, m.step)
    # The best policy as an MLflow model: Box actions within Pendulum's bounds
    # (SAC), integer actions (DQN), returns as evaluated.
    played = assert_policy_plays_as_evaluated(uri, parents[0].info.run_id, ALGORITHMS[name][3])
    assert played["dtype"] == ("float32" if name == "sac" else "int64")
