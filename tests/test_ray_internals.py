"""The canary for Ray's private state (pbtflow/ray_internals.py): every
private attribute, method and log text pbtflow relies on, looked up on the
real objects of the installed Ray. After a Ray upgrade this fails first, in
seconds, naming what moved, instead of a tuning run failing halfway."""

from __future__ import annotations

import inspect

import gymnasium
import pytest
import ray
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import PopulationBasedTraining, PopulationBasedTrainingReplay
from ray.tune.schedulers.pb2 import PB2
from ray.tune.search.basic_variant import BasicVariantGenerator

from pbtflow import pbt, ray_internals, stopping

PBT_ATTRIBUTES = ("_trial_state", "_hyperparam_mutations", "_metric", "_time_attr", "_synch",
                  "_perturbation_interval", "_next_perturbation_sync")


def _moved(found: list[str]) -> str:
    return (f"Ray {ray.__version__} moved what pbtflow uses: {'; '.join(found)}. pbtflow is tested "
            f"with Ray {ray_internals.TESTED_RAY}.x: install that, or update "
            f"src/pbtflow/ray_internals.py and the pin in pyproject.toml and conda.yml.")


def _missing(obj, names, where: str) -> list[str]:
    return [f"{where}.{name}" for name in names if not hasattr(obj, name)]


def test_the_ray_release_is_the_one_pinned_and_tested():
    assert ray.__version__.startswith(ray_internals.TESTED_RAY + "."), _moved(
        [f"the installed release is not {ray_internals.TESTED_RAY}.x"])


def test_tunes_private_state_is_where_pbtflow_reads_it(tmp_path):
    found = []
    for cls in (PopulationBasedTraining, PB2):
        scheduler = cls(metric="score", mode="max", perturbation_interval=2,
                        **({"hyperparam_mutations": {"lr": [0.1, 0.2]}} if cls is PopulationBasedTraining
                           else {"hyperparam_bounds": {"lr": [0.1, 0.2]}}))
        found += _missing(scheduler, PBT_ATTRIBUTES + ("_exploit",), cls.__name__)
        if not found:
            assert ray_internals.pbt_trial_states(scheduler) == {}
    # The methods pbtflow's subclasses override must still be the ones Ray calls.
    for cls, method, caller in ((PopulationBasedTraining, "_exploit", "_checkpoint_or_exploit"),
                                (PopulationBasedTrainingReplay, "_load_policy", "__init__")):
        if not hasattr(cls, method) or f"self.{method}(" not in inspect.getsource(getattr(cls, caller)):
            found.append(f"{cls.__name__}.{caller} calling {method}")
    try:
        from ray.tune.schedulers.pbt import _FutureTrainingResult

        found += _missing(_FutureTrainingResult, ("resolve",), "_FutureTrainingResult")
    except ImportError:
        found.append("ray.tune.schedulers.pbt._FutureTrainingResult")

    generator = BasicVariantGenerator()
    try:
        assert isinstance(ray_internals.live_trials(generator), set)
    except AttributeError:
        found.append("BasicVariantGenerator._live_trials")
    trial = Trial("__fake", stub=True)
    try:
        assert ray_internals.checkpoint_results(trial) == []
        ray_internals.set_checkpoint_results(trial, [])
    except AttributeError:
        found.append("Trial.run_metadata.checkpoint_manager._checkpoint_results")
    tuner = tune.Tuner(lambda config: None, run_config=tune.RunConfig(
        name="canary", storage_path=str(tmp_path), stop={"training_iteration": 3}))
    try:
        assert ray_internals.run_config(tuner).stop == {"training_iteration": 3}
    except AttributeError:
        found.append("Tuner._local_tuner.get_run_config")
    if "self._experiment_analysis" not in inspect.getsource(tune.ResultGrid.__init__):
        found.append("ResultGrid._experiment_analysis")
    # The interrupt watch (stopping.InterruptWatch) recognises Tune's warning
    # on the logger it watches.
    import ray.tune.tune as tune_module

    source = inspect.getsource(tune_module)
    if "has been interrupted" not in source or tune_module.logger.name != "ray.tune.tune" or \
            "logger.warning(" not in source[:source.find("has been interrupted")][-600:]:
        found.append("Tune's warning 'has been interrupted' on the 'ray.tune.tune' logger")
    if "self.trials" not in inspect.getsource(tune.ExperimentAnalysis.__init__):
        found.append("ExperimentAnalysis.trials (trial_statuses)")
    assert not found, _moved(found)
    assert issubclass(stopping.PopulationStopper, tune.Stopper) and issubclass(pbt.RecordingPBT, PopulationBasedTraining)


@pytest.fixture(scope="module")
def learner_and_runner():
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

    config = PPOConfig().environment("CartPole-v1")
    env = gymnasium.make("CartPole-v1")
    group = config.build_learner_group(env=env)
    yield config, group, SingleAgentEnvRunner(config=config)
    group.shutdown()
    env.close()


def test_rllibs_learner_and_env_runner_state_is_where_pbtflow_sets_it(learner_and_runner):
    from ray.rllib.connectors.env_to_module.mean_std_filter import MeanStdFilter

    config, group, env_runner = learner_and_runner

    class Algorithm:  # what local_learner reads of an Algorithm
        learner_group = group

    learner = ray_internals.local_learner(Algorithm)
    assert learner is not None, _moved(["LearnerGroup._learner (the local learner)"])
    found = _missing(learner, ("_module_optimizers", "_named_optimizers", "_optimizer_lr_schedules",
                               "_set_optimizer_lr", "_device", "_weights_seq_no", "_learner_connector"),
                     type(learner).__name__)
    # PPO's in-place reset also renews these (trainables/ppo_algorithm.py).
    found += _missing(learner, ("entropy_coeff_schedulers_per_module", "curr_kl_coeffs_per_module"),
                      type(learner).__name__)
    found += _missing(env_runner, ("_weights_seq_no", "_needs_initial_reset", "metrics", "_env_to_module"),
                      type(env_runner).__name__)
    if "_update_stats" not in inspect.getsource(MeanStdFilter):
        found.append("MeanStdFilter._update_stats (policy_model freezes a served filter)")
    assert not found, _moved(found)

    # The functions do what PPO's actor reuse needs: a new learning rate
    # reaches the optimizer, weights of any version are taken again.
    ray_internals.renew_lr_schedules(learner, config.copy(copy_frozen=False).training(lr=0.0123))
    rates = [group["lr"] for optimizer in learner._named_optimizers.values()
             for group in optimizer.param_groups]
    assert rates and all(abs(rate - 0.0123) < 1e-9 for rate in rates)
    ray_internals.forget_weights_version(learner)
    ray_internals.forget_weights_version(env_runner)
    ray_internals.restart_episodes(env_runner)
    from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

    filtered = SingleAgentEnvRunner(config=config.copy(copy_frozen=False).env_runners(
        env_to_module_connector=lambda *_: MeanStdFilter()))
    ray_internals.freeze_observation_filters(filtered)
    assert [piece._update_stats for piece in filtered._env_to_module.connectors
            if isinstance(piece, MeanStdFilter)] == [False]
    filtered.stop()
    assert learner._weights_seq_no == 0 and env_runner._needs_initial_reset
    assert ray_internals.learner_connectors(learner), "the learner's connector pipeline is empty"
