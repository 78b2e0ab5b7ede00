"""Config keys that look like credentials never reach MLflow: not as params,
tags, metrics or inside any artifact."""

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import pbtflow
from pbtflow.tracking import is_secret
from mlflow_checks import runs_by_role

SECRETS = {"api_key": "s3cr3t-api", "db_password": "hunter2-pw", "hf_token": "tok-123456",
           "connection_string": "Server=db;Password=p4ss", "client_secret": "cl-s3cret"}


@pytest.mark.parametrize("key", ["api_key", "API_KEY", "key", "aws.secret_access_key", "my_token",
                                 "db_password", "AZURE_CONNECTION_STRING", "credentials"])
def test_credential_like_keys(key):
    assert is_secret(key)


@pytest.mark.parametrize("key", ["lr", "keyboard", "monkey_speed", "num_epochs", "clip_param"])
def test_ordinary_keys(key):
    assert not is_secret(key)


def test_secrets_never_reach_mlflow(ray_runtime, workdir):
    exp = pbtflow.Experiment(trainable="user_trainables:counting", metric="score", population=2,
                             stop_iters=4, perturbation_interval=2, synch=True, seed=0,
                             experiment_name="secrets", initial={"x": 1.0, **SECRETS},
                             mutations={"x": [1.0, 2.0, 3.0]})
    pbtflow.tune(exp)
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    parents, children = runs_by_role(client, "secrets")
    assert parents and len(children) == 2
    for run in parents + children:
        text = json.dumps([run.data.params, run.data.tags, run.data.metrics])
        for artifact in client.list_artifacts(run.info.run_id):
            if not artifact.is_dir:
                local = client.download_artifacts(run.info.run_id, artifact.path, str(workdir))
                text += Path(local).read_text(errors="ignore")
        for key, value in SECRETS.items():
            assert value not in text, f"{key} leaked into run {run.info.run_id}"
    assert "x" in children[0].data.params  # ordinary hyperparameters are still there
