"""A user's own function trainable ("package.module:function") and the
checkpoint helper: bad paths fail before Ray starts with one sentence; a
member resumes at the saved step + 1, so its step always equals Tune's
training_iteration, through pauses and PBT exploits alike; an interrupt is
seen (KILLED runs) even when the caller has silenced logging."""

from __future__ import annotations

import pickle
import signal
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from ray import tune

import pbtflow
from pbtflow import checkpoint, trainables
from pbtflow.experiment import ExperimentError
from conftest import finish, run_entry, start_entry, wait_for_rows
from mlflow_checks import runs_by_role

SPACE = {"initial": {"x": tune.uniform(0.5, 2.0)}, "mutations": {"x": tune.uniform(0.5, 2.0)}}


@pytest.mark.parametrize("path, message", [
    ("no_such_module:train", "'no_such_module' must be an importable module, but got "
                             "trainable='no_such_module:train' (ModuleNotFoundError"),
    ("user_trainables:nothing", "module 'user_trainables' must define 'nothing', but got "
                                "trainable='user_trainables:nothing'; its functions and classes are: Climber, FileClimber, "
                                "NotATrainable, blocking, broken, counting"),
    ("user_trainables:NOT_A_FUNCTION", "must name a function taking the config dict or a "
                                       "tune.Trainable subclass, but got a int"),
    ("user_trainables:NotATrainable", "must name a function taking the config dict or a "
                                      "tune.Trainable subclass, but got a class that is not a "
                                      "ray.tune.Trainable"),
    ("user_trainables:two_arguments", "must accept exactly one argument (the config dict), but got "
                                      "two_arguments(config, extra)"),
])
def test_bad_trainable_paths_fail_before_ray_starts(path, message):
    experiment = pbtflow.Experiment(trainable=path, metric="score", **SPACE)
    with pytest.raises(ExperimentError) as error:
        trainables.build(experiment)
    assert str(error.value).startswith("trainable: ") and message in str(error.value)
    assert str(error.value).count(". ") == 0  # one sentence


def test_a_custom_trainable_needs_a_metric_and_mutations():
    with pytest.raises(ExperimentError, match=r"^metric: a custom trainable needs the metric"):
        trainables.build(pbtflow.Experiment(trainable="user_trainables:counting", **SPACE))
    with pytest.raises(ExperimentError, match=r"^mutations: PBT needs the hyperparameters"):
        trainables.build(pbtflow.Experiment(trainable="user_trainables:counting", metric="score"))


def test_entry_point_reports_an_unimportable_trainable_before_ray_starts(tmp_path):
    proc = run_entry("--trainable", "no_such_module:train", "--metric", "score", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith(
        "pbtflow: error: trainable: 'no_such_module' must be an importable module")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "Ray" not in proc.stdout + proc.stderr  # no local Ray instance was started
    assert not (tmp_path / "mlflow.db").exists()


def test_checkpoint_helper_reads_what_it_wrote(tmp_path):
    with open(tmp_path / checkpoint.STATE_FILE, "wb") as f:
        pickle.dump({"step": 6, "state": {"a": 1.5}}, f)
    saved = checkpoint.load(tune.Checkpoint.from_directory(str(tmp_path)))
    assert (saved["step"], saved["state"]) == (6, {"a": 1.5})
    assert checkpoint.load(None) is None
    with pytest.raises(ValueError, match="state.pkl is missing"):
        checkpoint.load(tune.Checkpoint.from_directory(str(tmp_path / "..")))
    with pytest.raises(ValueError, match="interval: must be at least 1"):
        checkpoint.configure(interval=0)


def test_resume_continues_at_the_saved_step_plus_one(ray_runtime, workdir):
    experiment = pbtflow.Experiment(trainable="user_trainables:counting", metric="score",
                                    population=2, perturbation_interval=2, stop_iters=10,
                                    synch=True, seed=0, experiment_name="helper", **SPACE)
    results = pbtflow.tune(experiment)
    assert results.num_errors == 0
    restores = 0
    for result in results:
        frame = result.metrics_dataframe
        assert list(frame["step"]) == list(frame["training_iteration"])
        restores += int(frame["restores"].max())
    assert restores >= 2, "synchronous PBT pauses (and exploits) every member at each interval"


def test_entry_point_imports_a_users_module_from_the_folder_it_runs_in(tmp_path):
    """`python src/tune_ppo.py` puts src/ on the path, not the working folder:
    a module there still imports (here it then fails on purpose, before Ray)."""
    (tmp_path / "mine.py").write_text("def train(config, extra):\n    pass\n")
    proc = run_entry("--trainable", "mine:train", "--metric", "score", cwd=tmp_path)
    assert proc.returncode == 2
    assert "'mine:train' must accept exactly one argument" in proc.stderr, proc.stderr


QUIET = """
import logging, sys
import pbtflow
from pbtflow.runs import TuningInterrupted

logging.disable(logging.WARNING)  # a notebook that silences Ray's chatter
experiment = pbtflow.Experiment(
    trainable="user_trainables:slow_counting", metric="score", population=2, stop_iters=1000,
    perturbation_interval=5, initial={"x": 1.0, "sleep": 0.1}, mutations={"x": [1.0, 2.0]},
    experiment_name="quiet", tracking_uri="sqlite:///mlflow.db", storage_path="results")
try:
    pbtflow.tune(experiment)
except TuningInterrupted as interrupted:
    print("interrupted:", interrupted.path)
    sys.exit(130)
print("ended")
"""


def test_an_interrupt_is_seen_though_the_callers_logging_is_disabled(tmp_path):
    """Tune tells of an interrupt only in a warning, which logging.disable()
    silences: pbtflow.tune still raises TuningInterrupted, and the members'
    runs and the parent run end KILLED (a resume reopens them), not
    FINISHED as if the members had reached their end."""
    (tmp_path / "quiet.py").write_text(QUIET)
    proc = start_entry(cwd=tmp_path, env={"PYTHONPATH": str(Path(__file__).parent)},
                       script=tmp_path / "quiet.py")
    wait_for_rows(tmp_path, 6, proc, timeout=120)
    proc.send_signal(signal.SIGINT)
    out, err = finish(proc, 120)
    assert proc.returncode == 130 and "interrupted: " in out, out[-2000:] + err[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parents, children = runs_by_role(client, "quiet")
    assert [p.info.status for p in parents] == ["KILLED"]
    assert len(children) == 2 and {c.info.status for c in children} == {"KILLED"}
