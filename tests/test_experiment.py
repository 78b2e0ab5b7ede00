"""The experiment model: defaults, presets, and every accepted and rejected boundary."""

import os
import pytest

from pbtflow.experiment import Experiment, ExperimentError, SettingError, from_sources, load_yaml


def test_defaults_are_the_ppo_discrete_preset_on_cartpole():
    exp = Experiment()
    assert (exp.trainable, exp.env, exp.population, exp.stop_return) == ("ppo", "CartPole-v1", 4, 450.0)
    assert exp.preset == "discrete"  # picked from CartPole's action space
    assert exp.perturbation_checkpoint_interval == exp.perturbation_interval == 10


@pytest.mark.parametrize("trainable, population, expected", [
    ("lr-schedule", 8, 1.0), ("quadratic", 2, 1.0), ("user_trainables:counting", 16, 1.0),
    ("ppo", 4, 0.5), ("ppo", 2, 1.0), ("ppo", 16, 0.25),
])
def test_cpus_per_member_by_default(trainable, population, expected, monkeypatch):
    """A function or class member takes one CPU (members take turns on live
    workers); PPO shares the cores so the whole population trains at once."""
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    exp = Experiment(trainable=trainable, population=population)
    assert exp.cpus_per_trial_process == expected
    assert Experiment(trainable=trainable, population=population,
                      cpus_per_trial_process=0.5).cpus_per_trial_process == 0.5  # the user's wins


def test_smoke_shrinks_the_population_and_budget():
    exp = Experiment(smoke=True)
    assert exp.population == 2 and exp.stop_iters <= 6


@pytest.mark.parametrize("key, value", [
    ("population", 4), ("stop_iters", 10), ("perturbation_interval", 3),
    ("checkpoint_interval", 1), ("stop_return", 100.0), ("quantile_fraction", 0.5),
])
def test_smoke_keeps_every_setting_the_user_gave(key, value):
    assert getattr(Experiment(smoke=True, **{key: value}), key) == value
    flags = {key: str(value)}  # as the CLI hands them over
    assert getattr(from_sources(None, {"smoke": "true", **flags}), key) == value


def test_smoke_keeps_settings_from_a_yaml_file(tmp_path):
    (tmp_path / "exp.yaml").write_text("population: 4\nstop_iters: 10\nperturbation_interval: 5\n")
    exp = from_sources(tmp_path / "exp.yaml", {"smoke": True})
    assert (exp.population, exp.stop_iters, exp.perturbation_interval) == (4, 10, 5)


def test_smoke_keeps_the_users_ppo_batches():
    from pbtflow.trainables import build

    spec = build(Experiment(smoke=True, initial={"train_batch_size_per_learner": 4000,
                                                 "num_epochs": 7}))
    assert spec.param_space["train_batch_size_per_learner"] == 4000
    assert spec.param_space["num_epochs"] == 7
    assert spec.param_space["minibatch_size"] == 64  # left unset: smoke's


def test_parent_params_only_name_settings_for_the_trainable():
    custom = Experiment(trainable="pkg.mod:train", metric="x", mutations={"a": [1, 2]})
    assert not {"env", "preset", "num_env_runners", "cpus_per_env_runner", "gpus_per_trial",
                "initial", "mutations"} & set(custom.applicable_settings())
    assert custom.applicable_settings()["trainable"] == "pkg.mod:train"
    assert {"env", "preset", "num_env_runners"} <= set(Experiment().applicable_settings())


@pytest.mark.parametrize("key, value", [
    ("population", 2), ("quantile_fraction", 0), ("quantile_fraction", 0.5),
    ("resample_probability", 0), ("resample_probability", 1), ("perturbation_interval", 0.5),
    ("stop_return", "inf"), ("num_env_runners", 0), ("max_failures", -1),
])
def test_accepted_boundaries(key, value):
    Experiment(**{key: value})


@pytest.mark.parametrize("key, value, words", [
    ("population", 1, "at least 2 members"),
    ("population", "four", "expected int"),
    ("population", 2.5, "expected int"),
    ("quantile_fraction", 0.51, "[0, 0.5]"),
    ("quantile_fraction", -0.1, "[0, 0.5]"),
    ("resample_probability", 1.01, "[0, 1]"),
    ("perturbation_interval", 0, "must be positive"),
    ("perturbation_interval", -3, "must be positive"),
    ("stop_iters", 0, "at least 1"),
    ("mode", "maximum", "'max' or 'min'"),
    ("num_env_runners", -1, "0 or more"),
    ("checkpoint_interval", 3, "must divide perturbation_interval=10"),
    ("env", "CartPole-v2", "did you mean 'CartPole-v1'"),
    ("env", "NoSuchThing", "not a registered gymnasium"),
    ("trainable", "not a path", "package.module:function"),
    ("mutations", {"lr": 3}, "must be a list, a Tune domain"),
    ("mutations", {"lr": {"uniform": ["a", "b"]}}, "not a valid Tune domain"),
    ("mutations", {}, "at least one hyperparameter"),
    ("synch", "maybe", "expected bool"),
])
def test_rejected_inputs_name_the_key(key, value, words):
    with pytest.raises(ExperimentError) as err:
        Experiment(**{key: value})
    message = str(err.value)
    assert message.startswith(key) and words in message
    assert "\n" not in message


def test_any_registered_env_is_accepted():
    assert Experiment(env="Pendulum-v1").env == "Pendulum-v1"
    assert Experiment(env="Acrobot-v1").env == "Acrobot-v1"


def test_flags_override_the_yaml_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("population: 6\nenv: Acrobot-v1\nstop-iters: 7\n"
                    "mutations:\n  lr: [1.0e-3, 1.0e-4]\n  clip_param: {uniform: [0.1, 0.3]}\n")
    exp = from_sources(path, {"population": "3"})
    assert (exp.population, exp.env, exp.stop_iters) == (3, "Acrobot-v1", 7)
    assert exp.mutations["lr"] == [1e-3, 1e-4]


def test_unknown_yaml_key_suggests_the_closest(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("populaton: 4\n")
    with pytest.raises(ExperimentError, match="unknown key 'populaton'.*did you mean 'population'"):
        load_yaml(path)


@pytest.mark.parametrize("text, words", [
    ("population: [4\n", "not valid YAML at line"),
    ("- 1\n- 2\n", "must hold a mapping"),
])
def test_bad_yaml_files(tmp_path, text, words):
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    with pytest.raises(ExperimentError, match=words.replace("[", r"\[")):
        load_yaml(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ExperimentError, match="no such file"):
        load_yaml(tmp_path / "nope.yaml")


def test_errors_say_their_kind():
    """Bad settings, an unreachable tracking server and a cluster too small are
    told apart by type (all are ExperimentError, caught by the CLI)."""
    import socket

    from pbtflow import ClusterError, SettingError, TrackingError
    from pbtflow.runs import check_reachable
    from pbtflow.cluster import check_resources

    with pytest.raises(SettingError, match="^population: "):
        Experiment(population=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens on it once closed
    with pytest.raises(TrackingError, match="^tracking_uri: the MLflow tracking server at "):
        check_reachable(f"http://127.0.0.1:{port}", timeout=2)
    with pytest.raises(ClusterError, match="^num_env_runners: one trial needs .* CPUs but the Ray cluster has 1;"):
        check_resources(Experiment(num_env_runners=2), {"CPU": 1, "GPU": 0})
    for kind in (SettingError, TrackingError, ClusterError):
        assert issubclass(kind, ExperimentError)


@pytest.mark.parametrize("argv, code, words", [
    (["tune", "--population", "1"], 2, "population: PBT needs at least 2 members"),
    (["report", "--run-id", "x", "--tracking-uri", "http://127.0.0.1:{port}"], 3,
     "tracking_uri: the MLflow tracking server at http://127.0.0.1:{port} is not reachable"),
    (["aml", "submit", "{repo}/jobs/quadratic-smoke.yml", "--workspace-config", "{tmp}/config.json"], 5,
     "credentials: no Azure credential could sign in"),
])
def test_the_command_exits_with_the_code_of_the_errors_kind(argv, code, words, tmp_path, monkeypatch, capsys):
    """What the CLI returns is the kind's exit code, with the one sentence (a
    cluster too small is 4: tests/test_multinode.py)."""
    import json
    import socket
    from pathlib import Path

    from pbtflow.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens on it once closed
    (tmp_path / "config.json").write_text(json.dumps(
        {"subscription_id": "00000000-0000-0000-0000-000000000000", "resource_group": "rg",
         "workspace_name": "ws"}))
    monkeypatch.setenv("AZURE_TOKEN_CREDENTIALS", "EnvironmentCredential")  # no sign-in possible
    for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    argv = [a.format(port=port, tmp=tmp_path, repo=Path(__file__).parents[1]) for a in argv]
    assert main(argv) == code
    err = capsys.readouterr().err
    assert words.format(port=port) in err and len(err.strip().splitlines()) == 1, err


def test_a_resume_state_survives_settings_added_or_removed(tmp_path):
    """The resume state is readable JSON with a version: a setting an older
    pbtflow did not have takes its default, one it no longer has is dropped,
    and a state from a newer pbtflow is refused in one sentence."""
    import json

    from ray import tune

    from pbtflow import resume

    experiment = Experiment(population=3, stop_iters=7, seed=5, stop_return=float("inf"),
                            initial={"lr": 0.01, "model": {"hiddens": [32, 32]}},
                            mutations={"lr": tune.loguniform(1e-4, 1e-1), "gamma": [0.9, 0.99]})
    resume.save(experiment, "run123", tmp_path)
    def not_json(constant):
        raise AssertionError(f"{constant} is not JSON")

    # what a person (or any strict JSON reader) reads
    data = json.loads((tmp_path / resume.STATE_FILE).read_text(), parse_constant=not_json)
    assert data["settings"]["stop_return"] == {"float": "inf"}
    assert data["version"] == resume.VERSION and data["parent_run_id"] == "run123"
    assert data["settings"]["population"] == 3 and data["settings"]["initial"]["model"] == {"hiddens": [32, 32]}
    assert set(data["settings"]["mutations"]["lr"]) == {"pickled"}  # a Python object: exact, not readable
    assert data["settings"]["mutations"]["gamma"] == [0.9, 0.99]
    state = resume.load(str(tmp_path))
    loaded = state["experiment"]
    assert state["parent_run_id"] == "run123" and state["path"] == str(tmp_path)
    assert loaded.population == 3 and loaded.stop_return == float("inf")
    assert loaded.initial == experiment.initial and loaded.perturbation_factors == experiment.perturbation_factors
    lr = loaded.mutations["lr"]
    assert (type(lr), lr.lower, lr.upper) == (type(experiment.mutations["lr"]), 1e-4, 1e-1)

    data["settings"]["a_setting_from_another_version"] = 1
    del data["settings"]["perturbation_interval"]
    (tmp_path / resume.STATE_FILE).write_text(json.dumps(data))
    state = resume.load(str(tmp_path))
    assert state["experiment"].population == 3 and state["experiment"].stop_iters == 7
    assert state["experiment"].perturbation_interval == Experiment(population=3).perturbation_interval

    data["version"] = resume.VERSION + 1
    (tmp_path / resume.STATE_FILE).write_text(json.dumps(data))
    with pytest.raises(SettingError, match=r"^resume: .* was written by a newer pbtflow \(state version 3"):
        resume.load(str(tmp_path))

    # Version 1 had no float marker: a one-key dict {"float": ...} was a dict.
    data["version"] = 1
    data["settings"]["initial"] = {"float": "inf"}
    data["settings"]["stop_return"] = 450.0
    (tmp_path / resume.STATE_FILE).write_text(json.dumps(data))
    assert resume.load(str(tmp_path))["experiment"].initial == {"float": "inf"}


def test_an_experiment_interrupted_by_an_older_pbtflow_still_resumes(tmp_path):
    """Before the JSON state, pbtflow kept it pickled (pbtflow_state.pkl), and
    Tune's own saved state names the callbacks' classes where they were then
    (pbtflow.tuning): both are still read."""
    import pickle

    from ray import cloudpickle

    from pbtflow import resume, stopping

    experiment = Experiment(population=3, stop_iters=7, seed=5)
    settings = {**experiment.to_dict(), "a_setting_from_another_version": 1}
    (tmp_path / resume.LEGACY_STATE_FILE).write_bytes(cloudpickle.dumps(
        {"settings": settings, "parent_run_id": "run123", "path": str(tmp_path)}))
    state = resume.load(str(tmp_path))
    assert state["experiment"] == experiment and state["parent_run_id"] == "run123"

    for cls, old_name in ((stopping.Population, "_Population"), (stopping.StallWatch, "_StallWatch"),
                          (stopping.TrainableWatch, "_TrainableWatch"),
                          (stopping.PopulationStopper, "PopulationStopper")):
        where = cls.__module__, cls.__qualname__
        cls.__module__, cls.__qualname__ = "pbtflow.tuning", old_name  # as pickled before the move
        try:
            data = pickle.dumps(cls)
        finally:
            cls.__module__, cls.__qualname__ = where
        assert b"pbtflow.tuning" in data and pickle.loads(data) is cls


def test_a_damaged_resume_state_fails_in_one_sentence(tmp_path):
    from pbtflow import resume

    (tmp_path / resume.STATE_FILE).write_text('{"version": 1, "settings": {}}')
    with pytest.raises(SettingError, match=r"^resume: .* is not a pbtflow resume state \(no 'parent_run_id'\); pass the folder"):
        resume.load(str(tmp_path))


def test_what_this_machine_decided_is_not_replayed_elsewhere():
    """CPUs per member derived from this machine's cores stay out of the
    portable settings (experiment.yaml, which replay re-runs); a value the
    user gave stays in."""
    derived = Experiment(trainable="ppo", population=4)
    assert derived.cpus_per_trial_process == max(0.25, min(1.0, (os.cpu_count() or 1) / 4))
    assert derived.to_dict()["cpus_per_trial_process"] == derived.cpus_per_trial_process
    assert derived.to_dict(portable=True)["cpus_per_trial_process"] is None
    assert Experiment(**derived.to_dict(portable=True)) == derived  # re-derived the same here
    given = Experiment(trainable="ppo", population=4, cpus_per_trial_process=0.5)
    assert given.to_dict(portable=True)["cpus_per_trial_process"] == 0.5


def test_evaluation_settings_come_from_the_preset_and_smoke_fills_only_what_is_unset():
    assert (Experiment().eval_top, Experiment().eval_episodes) == (3, 20)
    assert Experiment(smoke=True).eval_episodes == 3
    assert Experiment(smoke=True, eval_episodes=7, eval_top=0).eval_episodes == 7
    assert Experiment(smoke=True, eval_top=0).eval_top == 0
    assert Experiment(trainable="sac").eval_top == 3
    custom = Experiment(trainable="quadratic", smoke=True)
    assert custom.eval_top is None and custom.eval_episodes is None
    assert "eval_top" not in custom.applicable_settings()


def test_the_run_name_says_what_is_tuned_unless_given():
    assert Experiment().run_label == "ppo-CartPole-v1"
    assert Experiment(trainable="sac").run_label == "sac-Pendulum-v1"
    assert Experiment(trainable="lr-schedule").run_label == "lr-schedule"
    assert Experiment(trainable="mypkg.mymodule:train").run_label == "train"
    assert Experiment(trainable="sac", run_name="mine").run_label == "mine"
    with pytest.raises(ExperimentError, match="^run_name: must be letters"):
        Experiment(run_name="../elsewhere")
