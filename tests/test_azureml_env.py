"""The Azure ML job environment, offline: pip's resolver on conda.yml's pip
section (a dry run against the package index) picks azureml-mlflow with an
mlflow it accepts and, for the CPU environment, no CUDA packages; inside that
environment (make test-azureml-env), MLflow builds the ``azureml://`` tracking
store and artifact repository without raising. Nothing here calls Azure."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import textwrap

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from conftest import REPO

CUDA_PREFIXES = ("nvidia-", "cuda-", "triton")


def _pip_section(conda: dict) -> list[str]:
    return [d["pip"] for d in conda["dependencies"] if isinstance(d, dict)][0]


def _environment(name: str) -> list[str]:
    if name == "cpu":
        return _pip_section(yaml.safe_load((REPO / "conda.yml").read_text()))
    spec = yaml.safe_load((REPO / "environments" / f"{name}.yml").read_text())
    return _pip_section(spec["conda_file"])


def _resolve(requirements: list[str], tmp_path) -> dict[str, dict]:
    """pip's own resolution of ``requirements`` from scratch (nothing installed
    counts), as metadata by package name. Index options are dropped: PyTorch's
    CPU index is not reachable here, and this machine's index serves the same
    +cpu wheel."""
    req = tmp_path / "requirements.txt"
    req.write_text("\n".join(r for r in requirements if not r.startswith("-")))
    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
                           "--quiet", "--report", str(report), "-r", str(req)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {i["metadata"]["name"].lower(): i["metadata"]
            for i in json.loads(report.read_text())["install"]}


def _accepts(metadata: dict, name: str, version: str) -> bool:
    for line in metadata.get("requires_dist", []):
        req = Requirement(line)
        if req.name.lower() == name and not req.marker:
            return req.specifier.contains(version, prereleases=True)
    raise AssertionError(f"{metadata['name']} does not require {name}")


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_the_job_environment_resolves_with_azureml_mlflow_and_an_mlflow_it_accepts(name, tmp_path):
    resolved = _resolve(_environment(name), tmp_path)
    versions = {k: m["version"] for k, m in resolved.items()}
    assert "azureml-mlflow" in versions and "mlflow" in versions, sorted(versions)
    assert _accepts(resolved["azureml-mlflow"], "mlflow-skinny", versions["mlflow-skinny"])
    assert versions["mlflow"] == versions["mlflow-skinny"]
    assert Version(versions["azureml-mlflow"]) >= Version("1.62.0.post6")
    cuda = sorted(k for k in versions if k.startswith(CUDA_PREFIXES))
    if name == "cpu":
        assert versions["torch"].endswith("+cpu") and not cuda, (versions["torch"], cuda)
    else:
        assert "+" not in versions["torch"] and any(k.startswith("nvidia-") for k in cuda), cuda


def test_the_gpu_environment_is_the_cpu_set_with_cuda_torch():
    def pins(lines):
        return {Requirement(r).name: r for r in lines if not r.startswith("-")}

    cpu, gpu = pins(_environment("cpu")), pins(_environment("gpu"))
    assert set(cpu) == set(gpu)
    assert {k: v for k, v in cpu.items() if k != "torch"} == {k: v for k, v in gpu.items() if k != "torch"}
    assert (cpu["torch"], gpu["torch"]) == ("torch==2.13.0+cpu", "torch===2.13.0")
    assert not any(r.startswith("-") for r in _environment("gpu"))  # CUDA torch is PyPI's default
    gpu_spec = yaml.safe_load((REPO / "environments" / "gpu.yml").read_text())
    cpu_conda = yaml.safe_load((REPO / "conda.yml").read_text())
    assert [d for d in gpu_spec["conda_file"]["dependencies"] if isinstance(d, str)] == \
        [d for d in cpu_conda["dependencies"] if isinstance(d, str)]


_NO_NETWORK = textwrap.dedent("""
    import socket
    def _refuse(*args, **kwargs):
        raise OSError("network access refused by the test")
    socket.socket.connect = socket.socket.connect_ex = _refuse
    socket.create_connection = socket.getaddrinfo = _refuse
""")
_BUILD = textwrap.dedent("""
    import os
    WORKSPACE = ("azureml://eastus.api.azureml.ms/mlflow/v1.0/subscriptions/"
                 "00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/"
                 "Microsoft.MachineLearningServices/workspaces/ws")
    os.environ["MLFLOW_TRACKING_URI"] = WORKSPACE  # as Azure ML sets it inside a job
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.tracking import MlflowClient

    store = MlflowClient()._tracking_client.store
    # What MLflow does when pbtflow logs an artifact to a run of the workspace.
    repo = get_artifact_repository("azureml://experiments/pbt/runs/0123/artifacts",
                                   tracking_uri=WORKSPACE)
    print(type(store).__name__, type(repo).__name__)
""")


@pytest.mark.azureml_env
def test_mlflow_builds_the_workspace_store_and_artifact_repository_offline():
    """The pair that broke real jobs (azureml-mlflow 1.60 beside mlflow 3.17)
    raised TypeError here: azureml_artifacts_builder() got an unexpected keyword
    argument 'tracking_uri'."""
    pinned = {Requirement(r).name: Requirement(r) for r in _environment("cpu") if not r.startswith("-")}
    for name in ("mlflow", "azureml-mlflow", "ray", "torch"):  # this is the job's environment
        assert pinned[name].specifier.contains(importlib.metadata.version(name)), name
    proc = subprocess.run([sys.executable, "-c", _NO_NETWORK + _BUILD], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["AzureMLRestStore", "AzureMLflowArtifactRepository"], proc.stdout
