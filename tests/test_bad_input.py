"""Every bad input ends in one true sentence and exit code 2. Before Ray: a
table walks every setting of the experiment model with values that break its
rule (from its type, and the `invalid` examples declared with the setting, so
a new setting is covered when it is added). At the first results, on a real
Ray runtime: what only the trainable can tell."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from mlflow.tracking import MlflowClient

import pbtflow
from pbtflow import cluster, names
from pbtflow.cli import main
from pbtflow.experiment import Experiment, ExperimentError
from mlflow_checks import runs_by_role

TYPE_BREAKERS = {"int": ["many", "2.5"], "float": ["lots"], "bool": ["maybe"], "dict": [[1, 2]]}


def _cases():
    cases = []
    for f in dataclasses.fields(Experiment):
        kind = str(f.type).split(" ")[0].split("|")[0]
        values = TYPE_BREAKERS.get(kind, []) + list(f.metadata.get("invalid", ()))
        cases += [pytest.param(f.name, value, id=f"{f.name}={value!r}") for value in values]
    return cases


def test_every_setting_has_values_that_break_it():
    covered = {case.values[0] for case in _cases()}
    free_form = {"stop_return"}  # any number is a valid target ('inf' included): its type is the rule
    assert {f.name for f in dataclasses.fields(Experiment)} - covered <= free_form


# Settings whose bad values are faults of another kind than a setting's (exit code 2).
OTHER_KINDS = {("tracking_uri", "'http://127.0.0.1:9'"): 3,  # TrackingError: the server is not there
               ("num_env_runners", "'64'"): 4}  # ClusterError: a trial larger than this machine


@pytest.mark.parametrize("name, value", _cases())
def test_a_bad_setting_fails_before_ray_in_one_sentence(name, value, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def no_ray(*_):
        raise AssertionError(f"{name}={value!r} reached Ray")

    monkeypatch.setattr(cluster, "init_ray", no_ray)
    field = next(f for f in dataclasses.fields(Experiment) if f.name == name)
    if field.metadata.get("cli", True):
        flag = "--" + name.replace("_", "-")
        args = [f"{flag}={value}"] if not str(field.type).startswith("bool") else [flag, value]
        if str(field.type).startswith("bool"):  # a flag takes no value: the YAML key does
            (tmp_path / "exp.yaml").write_text(yaml.safe_dump({name: value}))
            args = ["--config", "exp.yaml"]
    else:
        (tmp_path / "exp.yaml").write_text(yaml.safe_dump({name: value}))
        args = ["--config", "exp.yaml"]
    code = main(["tune", *args])
    err = capsys.readouterr().err.strip()
    assert code == OTHER_KINDS.get((name, repr(value)), 2), err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("pbtflow: error: "), err
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("text, words", [
    ("population: 4\nstop_iters: 3\npopulation: 5\n", "names 'population' twice (lines 1 and 3)"),
    ("stop-iters: 3\nstop_iters: 4\n", "names the setting 'stop_iters' twice"),
    ("mutations:\n  lr: [1.0e-3]\n  lr: [1.0e-4]\n", "names 'lr' twice (lines 2 and 3)"),
    ("mutations: {lr: {randint: [4, 4]}}\n", "mutations.lr: the range [4, 4) holds no value"),
    ("mutations: {lr: {uniform: [0.5, 0.1]}}\n", "mutations.lr: the range [0.5, 0.1] holds no value"),
    ("trainable: quadratic\ninitial: {h0: 2.0}\n",
     "initial.h0: 2 lies outside its mutation's range [0, 1]"),
    ("trainable: quadratic\nmode: min\n", "mode: quadratic's metric 'Q' is maximised"),
    ("trainable: quadratic\nstop_episodes: 20\n",
     "stop_episodes: averages an RLlib member's 'env_runners/episode_return_mean' over episodes, "
     "but got stop_episodes=20 with trainable='quadratic'"),
    ("metric: env_runners/episode_return_max\nstop_episodes: 20\n",
     "and metric='env_runners/episode_return_max'; leave it out"),
    ("trainable: sac\nstop_episodes: 20\n", "stop_episodes: sets how --stop-return's mean is taken, "
     "but got stop_episodes=20 without stop_return"),
])
def test_config_files_that_contradict_themselves(text, words, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cluster, "init_ray", lambda *_: pytest.fail("reached Ray"))
    (tmp_path / "exp.yaml").write_text(text)
    assert main(["tune", "--config", "exp.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1, err


# -- at the first results, on a real Ray runtime --------------------------------------
@pytest.mark.parametrize("settings, words", [
    ({"trainable": "user_trainables:broken", "metric": "score"},
     "trainable: 'user_trainables:broken' raised ZeroDivisionError: float division by zero at "),
    ({"trainable": "user_trainables:silent", "metric": "score"},
     "trainable: 'user_trainables:silent' returned without reporting a result"),
    ({"trainable": "user_trainables:counting", "metric": "score", "time_attr": "nonsense"},
     "time_attr: the trainable never reports 'nonsense' (it reported: "),
    ({"trainable": "user_trainables:counting", "metric": "loss"},
     "metric: the trainable never reports 'loss' (it reported: "),
])
def test_what_only_the_trainable_can_tell_ends_the_run_at_once(settings, words, ray_runtime,
                                                                workdir):
    experiment = Experiment(population=2, stop_iters=50, experiment_name="broken", seed=0,
                            mutations={"x": [1.0, 2.0]}, initial={"x": 1.0}, **settings)
    with pytest.raises(ExperimentError) as error:
        pbtflow.tune(experiment)
    message = str(error.value)
    assert message.startswith(words), message
    assert "\n" not in message
    if "broken" in words:
        assert "user_trainables.py:" in message and "in broken" in message
    parents, children = runs_by_role(MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}"), "broken")
    assert parents[0].info.status == "FAILED"
    assert parents[0].data.tags[names.ERROR] == message
    assert all(c.info.status != "RUNNING" for c in children)
    for child in children:  # at once: no member trained on
        iterations = [m.value for m in MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
                      .get_metric_history(child.info.run_id, names.TRAINING_ITERATION)]
        assert len(iterations) <= 2, iterations
