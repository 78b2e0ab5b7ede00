"""conda.yml (the Azure ML environment) installs what pyproject.toml declares:
every runtime dependency, pinned (or bounded) inside pyproject's range, plus
the Azure ML packages inside the bounds of their extras."""

import tomllib

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from conftest import REPO

AZURE_ML = {"azureml-mlflow": "azureml-tracking", "azure-ai-ml": "azure"}


def _by_name(lines) -> dict[str, Requirement]:
    reqs = [Requirement(line) for line in lines]
    return {r.name.lower(): r for r in reqs}


def _conda_pip() -> dict[str, Requirement]:
    conda = yaml.safe_load((REPO / "conda.yml").read_text())
    pip = [d["pip"] for d in conda["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip) == 1, "conda.yml needs exactly one pip section"
    return _by_name(line for line in pip[0] if not line.startswith("-"))


def _version(req: Requirement) -> str:
    """The version a requirement pins, or the lower bound it gives."""
    bounds = [s.version for s in req.specifier if s.operator in ("==", "===", ">=")]
    assert len(bounds) == 1, f"{req} needs one pin or one lower bound"
    return bounds[0]


def test_conda_yml_pins_the_runtime_dependencies_inside_pyprojects_ranges():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = _by_name(project["dependencies"])
    extras = project["optional-dependencies"]
    conda = _conda_pip()

    assert set(conda) == set(runtime) | set(AZURE_ML)
    for name, req in runtime.items():
        assert conda[name].extras == req.extras, name
        assert req.specifier.contains(_version(conda[name]), prereleases=True), (name, str(conda[name]))
    for name, extra in AZURE_ML.items():
        bound = _by_name(extras[extra])[name]
        assert bound.specifier.contains(_version(conda[name]), prereleases=True), name
    for name in ("ray", "mlflow", "azureml-mlflow", "torch", "gymnasium"):  # the tested set
        assert str(conda[name].specifier).startswith("=="), f"{name} must be pinned in conda.yml"


def test_conda_python_satisfies_requires_python():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    conda = yaml.safe_load((REPO / "conda.yml").read_text())
    pythons = [d for d in conda["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert len(pythons) == 1
    version = pythons[0].split("=", 1)[1]
    assert version == "3.11"
    assert SpecifierSet(project["requires-python"]).contains(version)
