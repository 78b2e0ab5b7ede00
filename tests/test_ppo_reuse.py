"""A live PPO Algorithm reset for another member (Tune's actor reuse) behaves
as a freshly built one: RLlib itself is the reference (a second Algorithm
built from scratch, the donor's own weights and filter, the optimizer)."""

import numpy as np
import pytest

from pbtflow.trainables.rllib import mean_std_filter
from pbtflow.trainables.ppo_algorithm import PBTPPO, EffectiveValues


def config(**overrides):
    from ray.rllib.algorithms.ppo import PPOConfig

    built = (PPOConfig().environment("CartPole-v1")
             .env_runners(num_env_runners=0, num_envs_per_env_runner=2,
                          env_to_module_connector=mean_std_filter)
             .training(train_batch_size_per_learner=256, minibatch_size=64, num_epochs=2)
             .callbacks(EffectiveValues).debugging(seed=0))
    values = built.to_dict()
    values.update(overrides)
    return values


def weights(algo):
    learner = algo.learner_group._learner.module["default_policy"].state_dict()
    runner = algo.env_runner.module.state_dict()
    return ({k: np.array(v, copy=True) for k, v in learner.items()},  # not views of live tensors
            {k: np.array(v, copy=True) for k, v in runner.items()})


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.allclose(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def donor(ray_runtime, tmp_path_factory):
    algo = PBTPPO(config=config())
    for _ in range(2):
        algo.train()
    path = tmp_path_factory.mktemp("donor")
    algo.save_checkpoint(str(path))
    yield algo, str(path)
    algo.stop()


def test_exploit_into_a_live_actor_loads_the_donor_and_applies_the_new_values(donor):
    donor_algo, checkpoint = donor
    algo = PBTPPO(config=config(lr=1e-3))
    for _ in range(4):  # further along than the donor: RLlib skips older weights unless reset
        algo.train()
    new = {"lr": 5e-5, "gamma": 0.9, "lambda": 0.5, "entropy_coeff": 0.01,
           "train_batch_size_per_learner": 512, "num_epochs": 3}
    assert algo.reset(config(**new)) is True
    algo.restore(checkpoint)
    optimizers = algo.learner_group._learner._named_optimizers.values()
    # the restored optimizer state carries the donor's lr: the first update must not use it
    assert [group["lr"] for o in optimizers for group in o.param_groups] == [5e-5]

    donor_weights, _ = weights(donor_algo)
    learner, runner = weights(algo)
    assert same(learner, donor_weights)
    assert same(runner, {k: learner[k] for k in runner})  # the env runner acts with them
    filters = [algo.env_runner._env_to_module.get_state(), donor_algo.env_runner._env_to_module.get_state()]
    assert str(filters[0]) == str(filters[1])  # the donor's observation statistics

    result = algo.train()
    learners = result["learners"]["default_policy"]
    assert learners["default_optimizer_learning_rate"] == pytest.approx(5e-5)
    assert learners["curr_entropy_coeff"] == pytest.approx(0.01)
    assert result["env_runners"]["num_env_steps_sampled"] == 512
    effective = result["effective"]
    for key in ("gamma", "lambda", "num_epochs", "train_batch_size_per_learner"):
        assert effective[key] == pytest.approx(new[key]), key
    algo.stop()


def test_a_new_member_on_a_live_actor_starts_from_fresh_weights(ray_runtime):
    reference = PBTPPO(config=config(lr=1e-3))
    fresh = weights(reference)
    expected = reference.train()["env_runners"]["num_env_steps_sampled_lifetime"]
    reference.stop()
    algo = PBTPPO(config=config())
    for _ in range(2):
        algo.train()
    assert not same(weights(algo)[0], fresh[0])
    assert algo.reset(config(lr=1e-3)) is True  # no checkpoint follows
    assert same(weights(algo)[0], fresh[0]) and same(weights(algo)[1], fresh[1])
    result = algo.train()
    assert result["training_iteration"] == 1
    assert result["env_runners"]["num_env_steps_sampled_lifetime"] == expected  # its own only
    assert result["learners"]["default_policy"]["default_optimizer_learning_rate"] == 1e-3
    algo.stop()


def test_a_change_that_needs_a_new_actor_is_refused(ray_runtime):
    algo = PBTPPO(config=config())
    assert algo.reset(config(num_envs_per_env_runner=4)) is False
    algo.stop()


def test_members_that_start_alike_are_seeded_apart(ray_runtime, tmp_path):
    """Two members with the same settings (every PPO value fixed by the
    user) do not play the same episodes: each builds with the experiment's
    seed plus its own stride. Seeded alike, RLlib on a CPU repeats the same
    losses (checked by hand with the stride removed)."""
    import pbtflow
    from mlflow.tracking import MlflowClient

    from mlflow_checks import runs_by_role
    from pbtflow.trainables.rllib_algorithm import SEED_STRIDE, member_seed

    assert [member_seed(7, f"ab12_{i:05d}") for i in range(3)] == [7, 7 + SEED_STRIDE, 7 + 2 * SEED_STRIDE]
    assert member_seed(None, "ab12_00001") is None and member_seed(7, "default") == 7
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    fixed = {"gamma": 0.99, "lambda": 1.0, "lr": 1e-3, "clip_param": 0.3, "entropy_coeff": 0.0,
             "vf_loss_coeff": 0.01, "num_epochs": 2, "minibatch_size": 64,
             "train_batch_size_per_learner": 256}
    results = pbtflow.tune(pbtflow.Experiment(
        env="CartPole-v1", population=2, stop_iters=2, perturbation_interval=100, seed=7,
        num_envs_per_env_runner=2, initial=fixed, mutations={"lr": [1e-3, 5e-4]}, eval_top=0,
        experiment_name="alike", tracking_uri=uri, storage_path=str(tmp_path / "results")))
    assert results.num_errors == 0
    drop = {"trial_id", "__trial_info__", "seed"}
    configs = [{k: v for k, v in r.config.items() if k not in drop} for r in results]
    assert configs[0] == configs[1]  # only the seed tells them apart
    assert sorted(r.config["seed"] for r in results) == [7, 7 + SEED_STRIDE]  # what RLlib built with
    client = MlflowClient(uri)
    _, children = runs_by_role(client, "alike")
    histories = [[m.value for m in client.get_metric_history(c.info.run_id, "learners/default_policy/policy_loss")]
                 for c in children]
    assert len(histories) == 2 and all(len(h) == 2 for h in histories)
    assert histories[0] != histories[1]
