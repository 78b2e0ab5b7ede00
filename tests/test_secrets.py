"""Credentials never reach MLflow or the console, however deeply they sit in
the config: planted values under every key rule and every value rule, at
several depths, are searched for byte for byte in the whole store (database
file and artifact folders) and in the captured console."""

import json
import re
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pbtflow.credentials import REDACTED, is_secret, looks_secret, redact, scrub
from conftest import run_entry, start_mlflow_server, stop_mlflow_server
from mlflow_checks import runs_by_role

# Every planted value is distinct, so a leak names the rule that missed it.
INITIAL = {
    "x": 1.0,
    "api_token": "plant-01-top-token",
    "client_secret": "plant-02-top-secret",
    "private_key": "plant-03-private-key",
    "db": {
        "host": "db.internal",
        "password": "plant-04-nested-password",
        "connection_string": "Server=db;Database=x;Password=plant-05-in-connstr",
        "url": "Driver=pg;Server=db;Pwd=plant-06-connstr-under-plain-key",
    },
    "sim": {
        "auth": {"user": "plant-07-under-auth", "scopes": ["plant-08-list-under-auth"]},
        "endpoints": [{"name": "main", "href": "https://acct.blob/c?sv=1&sig=plant-09-sas-sig&se=2"}],
        "storage": {"sas": "plant-10-sas", "account_key": "plant-11-account-key"},
        "header": "Bearer plant-12-bearer-token",
        "mirror": "https://user:plant-13-url-password@mirror.example/x",
    },
    "credentials": {"user": "plant-14-cred-user", "pass": "plant-15-cred-pass"},
}
PLANTED = re.findall(r"plant-\d\d-[a-z-]+", json.dumps(INITIAL))
YAML = ("trainable: user_trainables:counting\nmetric: score\npopulation: 2\nstop_iters: 4\n"
        "perturbation_interval: 2\nsynch: true\nseed: 0\nexperiment_name: secrets\n"
        f"initial: {json.dumps(INITIAL)}\nmutations: {{x: [1.0, 2.0, 3.0]}}\n")


@pytest.mark.parametrize("key", ["api_key", "API_KEY", "key", "aws.secret_access_key", "my_token",
                                 "db_password", "AZURE_CONNECTION_STRING", "credentials",
                                 "db.pwd", "sim.auth.user", "storage.sas", "private_key",
                                 "authorization", "account_key", "ssh_keys", "session_cookie"])
def test_credential_like_keys(key):
    assert is_secret(key)


@pytest.mark.parametrize("key", ["lr", "keyboard", "monkey_speed", "num_epochs", "clip_param",
                                 "author", "kl_coeff", "sasquatch", "hotkey", "passthrough"])
def test_ordinary_keys(key):
    assert not is_secret(key)


@pytest.mark.parametrize("value", ["Server=a;Password=b", "Driver=x;Pwd=y", "Bearer abcdef123456",
                                   "AccountName=a;AccountKey=b==", "https://h/c?sv=1&sig=abc",
                                   "https://u:p@host/x", "eyJhbGciOiJI.eyJzdWIiOiIx.abc"])
def test_credential_like_values(value):
    assert looks_secret(value) and REDACTED in redact(f"error: {value} failed")


def test_scrub_replaces_at_every_depth_and_keeps_the_rest():
    clean = scrub(INITIAL)
    assert clean["db"] == {"host": "db.internal", "password": REDACTED,
                           "connection_string": REDACTED, "url": REDACTED}
    assert clean["sim"]["endpoints"] == [{"name": "main", "href": REDACTED}]
    assert clean["sim"]["auth"] == REDACTED and clean["x"] == 1.0
    assert not any(p in json.dumps(clean) for p in PLANTED)


def _files_holding(root: Path, planted: list[str]) -> dict[str, list[str]]:
    found = {}
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits = [p for p in planted if p.encode() in data]
            if hits:
                found[str(path.relative_to(root))] = hits
    return found


def _assert_run_and_no_leak(proc, client, store: Path):
    assert proc.returncode == 0, proc.stderr[-3000:]
    parents, children = runs_by_role(client, "secrets")
    assert len(parents) == 1 and len(children) == 2
    assert parents[0].data.tags.get("pbtflow.record_check") == "complete"
    params = children[0].data.params
    assert params["db.host"] == "db.internal"  # nested settings are flattened params
    assert params["db.password"] == REDACTED and params["sim.endpoints"] == str([{"name": "main",
                                                                                   "href": REDACTED}])
    assert len(PLANTED) == 15
    assert _files_holding(store, PLANTED) == {}
    console = proc.stdout + proc.stderr
    assert [p for p in PLANTED if p in console] == []


def test_no_planted_credential_reaches_a_sqlite_store_or_the_console(tmp_path):
    (tmp_path / "exp.yaml").write_text(YAML)
    proc = run_entry("--config", "exp.yaml", "--storage-path", str(tmp_path / "ray"),
                     cwd=tmp_path, env={"PYTHONPATH": str(Path(__file__).parent)})
    store = tmp_path / "store"  # the database and the artifact folder, not Ray's own folder
    store.mkdir()
    for name in ("mlflow.db", "mlruns"):
        (tmp_path / name).rename(store / name)
    _assert_run_and_no_leak(proc, MlflowClient(f"sqlite:///{store / 'mlflow.db'}"), store)
    # The search finds what is there: Ray's own experiment folder keeps the
    # trials' configs (its state files, its PBT log), credentials included.
    assert _files_holding(tmp_path / "ray", PLANTED)


def test_no_planted_credential_reaches_an_mlflow_server(tmp_path):
    root = tmp_path / "server"
    server, uri = start_mlflow_server(root)
    try:
        (tmp_path / "exp.yaml").write_text(YAML)
        proc = run_entry("--config", "exp.yaml", "--tracking-uri", uri, "--storage-path",
                         str(tmp_path / "ray"), cwd=tmp_path,
                         env={"PYTHONPATH": str(Path(__file__).parent)})
        _assert_run_and_no_leak(proc, MlflowClient(uri), root)
    finally:
        stop_mlflow_server(server)


def test_the_best_checkpoint_stays_out_of_mlflow_when_asked(tmp_path):
    (tmp_path / "exp.yaml").write_text(YAML)
    proc = run_entry("--config", "exp.yaml", "--no-upload-checkpoint", "--storage-path",
                     str(tmp_path / "ray"), cwd=tmp_path,
                     env={"PYTHONPATH": str(Path(__file__).parent)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = runs_by_role(client, "secrets")[0][0]
    assert parent.data.params["upload_checkpoint"] == "False"
    assert "best_checkpoint" not in {a.path for a in client.list_artifacts(parent.info.run_id)}
