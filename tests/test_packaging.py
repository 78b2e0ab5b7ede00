"""conda.yml (the Azure ML environment) installs what pyproject.toml declares:
the same runtime dependencies with the same lower bounds, plus the Azure ML
packages at the bounds of the `azure` extra."""

import tomllib

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from conftest import REPO

AZURE_ML = {"azureml-mlflow", "azure-ai-ml"}


def _lower_bound(spec: SpecifierSet) -> str | None:
    bounds = [s.version for s in spec if s.operator in (">=", "==", "~=")]
    return bounds[0] if len(bounds) == 1 else None


def _by_name(lines) -> dict[str, Requirement]:
    reqs = [Requirement(line) for line in lines]
    return {r.name.lower(): r for r in reqs}


def _conda_pip() -> dict[str, Requirement]:
    conda = yaml.safe_load((REPO / "conda.yml").read_text())
    pip = [d["pip"] for d in conda["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip) == 1, "conda.yml needs exactly one pip section"
    return _by_name(line for line in pip[0] if not line.startswith("-"))


def test_conda_yml_installs_the_runtime_dependencies_of_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = _by_name(project["dependencies"])
    azure_extra = _by_name(project["optional-dependencies"]["azure"])
    conda = _conda_pip()

    assert set(conda) == set(runtime) | AZURE_ML
    for name, req in runtime.items():
        assert conda[name].extras == req.extras, name
        assert _lower_bound(conda[name].specifier) == _lower_bound(req.specifier), name
        assert conda[name].specifier == req.specifier, name  # upper bounds too
    for name in AZURE_ML:
        assert _lower_bound(conda[name].specifier) == _lower_bound(azure_extra[name].specifier), name
    for name, req in {**runtime, **conda}.items():
        assert _lower_bound(req.specifier) is not None, f"{name} needs a lower bound"


def test_conda_python_satisfies_requires_python():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    conda = yaml.safe_load((REPO / "conda.yml").read_text())
    pythons = [d for d in conda["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert len(pythons) == 1
    version = pythons[0].split("=", 1)[1]
    assert version == "3.11"
    assert SpecifierSet(project["requires-python"]).contains(version)
