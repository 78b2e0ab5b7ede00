"""The best policy as an MLflow model: its signature from the environment's
spaces, and MLflow's process-wide tracking URI left as it was. The model
itself is loaded and played end to end in test_pipeline and
test_rllib_algorithms."""

import os

import mlflow
import numpy as np
import pytest

from pbtflow.policy import _tracking_uri, signature_and_example


@pytest.mark.parametrize("env_id, obs, action", [
    ("CartPole-v1", ("float32", (-1, 4)), ("int64", (-1,))),
    ("Pendulum-v1", ("float32", (-1, 3)), ("float32", (-1, 1))),
    ("MountainCarContinuous-v0", ("float32", (-1, 2)), ("float32", (-1, 1))),
])
def test_the_signature_follows_the_environments_spaces(env_id, obs, action):
    signature, example = signature_and_example(env_id, seed=5)
    (inputs,), (outputs,) = signature.inputs.inputs, signature.outputs.inputs
    assert (str(inputs.type), inputs.shape) == obs and (str(outputs.type), outputs.shape) == action
    assert example.shape == (3, obs[1][1]) and str(example.dtype) == obs[0]
    assert len({tuple(row) for row in example}) == 3  # three fresh resets, not one repeated
    assert np.array_equal(example, signature_and_example(env_id, seed=5)[1])


def test_spaces_a_pyfunc_cannot_take_get_no_model():
    assert signature_and_example("Blackjack-v1", seed=0) is None  # Tuple observations


@pytest.mark.parametrize("variable, process_wide", [(None, None), ("sqlite:///env.db", None),
                                                    (None, "sqlite:///set.db"),
                                                    ("sqlite:///env.db", "sqlite:///set.db")])
def test_the_tracking_uri_is_put_back_as_it_was(variable, process_wide, monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    if variable:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", variable)
    monkeypatch.chdir(tmp_path)
    before = mlflow.get_tracking_uri()
    if process_wide:
        mlflow.set_tracking_uri(process_wide)
        if variable:  # set_tracking_uri also sets the variable; the user's was different
            monkeypatch.setenv("MLFLOW_TRACKING_URI", variable)
    try:
        expected, environment = mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")
        with _tracking_uri("http://127.0.0.1:9"):
            assert mlflow.get_tracking_uri() == "http://127.0.0.1:9"
        assert mlflow.get_tracking_uri() == expected
        assert os.environ.get("MLFLOW_TRACKING_URI") == environment
    finally:
        if process_wide:
            mlflow.set_tracking_uri(None)
            if variable:
                monkeypatch.setenv("MLFLOW_TRACKING_URI", variable)
    # Nothing left set: the default still follows the working directory.
    assert mlflow.get_tracking_uri() == before
    if not variable:
        monkeypatch.chdir(tmp_path.parent)
        assert mlflow.get_tracking_uri() != before


def test_a_checkpoint_without_an_rllib_policy_logs_no_model(tmp_path):
    from mlflow import MlflowClient

    from pbtflow.policy import log_policy

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("x", str(tmp_path / "artifacts")))
    (tmp_path / "checkpoint" / "env_runner").mkdir(parents=True)  # a function trainable's, say
    assert log_policy(uri, run.info.run_id, str(tmp_path / "checkpoint"), "CartPole-v1", 0) is None
    assert not client.get_run(run.info.run_id).outputs.model_outputs
