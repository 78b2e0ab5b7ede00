"""Azure ML command job specs: rendered from a sizing plan (every setting an
input of the job, checked by building the Experiment the job will build), and
job and environment files checked offline with azure-ai-ml's own loader."""

from __future__ import annotations

import json
import logging
import re
import shlex
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import yaml

from pbtflow.azureml.sizing import RAY_NODES_ENV, SizingPlan, _fail
from pbtflow.experiment import AzureMLError, Experiment, field_names
from pbtflow.trainables import defaults_for, rllib_name

JOB_SCHEMA = "https://azuremlschemas.azureedge.net/latest/commandJob.schema.json"
ENTRY_SCRIPT = "tune_ppo.py"
STORAGE_OUTPUT = "checkpoints"
_REFERENCE = re.compile(r"\$\{\{\s*(inputs|outputs)\.([A-Za-z_][\w]*)\s*\}\}")
_INSTALL_HINT = "pip install 'pbtflow[azure]'"
CPU_ENVIRONMENT = "azureml:pbtflow-cpu@latest"  # environments/cpu.yml
GPU_ENVIRONMENT = "azureml:pbtflow-gpu@latest"  # environments/gpu.yml


@dataclass(frozen=True)
class JobOptions:
    """What the job spec holds besides the plan. ``settings`` are further
    ``pbtflow tune`` settings (field name -> value), each becoming an input."""

    trainable: str = "ppo"
    env: str | None = None  # default: the trainable's (CartPole-v1; sac: Pendulum-v1)
    preset: str | None = None  # default: PPO's cluster preset; the others pick by the env
    settings: Mapping[str, Any] | None = None
    compute: str | None = None  # default: cpu-cluster, or gpu-cluster when trials use GPUs
    environment: str | None = None  # default: the CPU or GPU environment, likewise
    experiment_name: str = "pbtflow"
    display_name: str | None = None
    shm_size: str | None = None


def _tune_settings(plan: SizingPlan, options: JobOptions) -> dict[str, Any]:
    """The settings the job passes to ``pbtflow tune`` (inputs, in order), checked
    by building the Experiment the job will build."""
    rllib = rllib_name(options.trainable) is not None
    trainable = options.trainable.lower() if rllib else options.trainable  # 'SAC' is 'sac'
    settings: dict[str, Any] = {"trainable": trainable}
    if rllib:  # the env and the search-space preset are RLlib's
        settings["env"] = options.env or defaults_for(trainable)["env"]
        settings["preset"] = options.preset or ("cluster" if trainable == "ppo" else "auto")
    settings["population"] = plan.population
    settings["cpus_per_trial_process"] = plan.cpus_per_trial_process
    if rllib:
        settings["num_env_runners"] = plan.num_env_runners
        settings["cpus_per_env_runner"] = plan.cpus_per_env_runner
    elif plan.num_env_runners:
        _fail("num_env_runners", f"only RLlib trainables have env runners, but got {plan.num_env_runners} "
              f"with trainable {trainable!r}; drop --num-env-runners")
    if rllib or plan.gpus_per_trial:
        settings["gpus_per_trial"] = plan.gpus_per_trial
    extra = dict(options.settings or {})
    valid = field_names()
    for key in extra:
        if key not in valid or key in ("initial", "mutations"):
            _fail("set", f"{key!r} is not a `pbtflow tune` setting that takes a flag; use one of "
                  f"{', '.join(k for k in valid if k not in ('initial', 'mutations'))}")
        if key in settings or key in ("storage_path", "tracking_uri", "resume"):
            _fail("set", f"{key!r} is set by the job itself (from the plan, the output folder or "
                  "the workspace), but got it in --set; drop it")
    settings.update({k: _number(v) for k, v in extra.items()})
    experiment = Experiment(**settings)  # the plan's population wins, --smoke included
    if abs(experiment.cpus_per_trial - plan.cpus_per_trial) > 1e-9:
        _fail("cpus_per_trial", f"the plan assumes {plan.cpus_per_trial:g} CPUs per trial, but "
              f"trainable {options.trainable!r} asks Ray for {experiment.cpus_per_trial:g}")
    return settings


def _number(value: Any) -> Any:
    """YAML-friendly scalars: '8' -> 8, '0.5' -> 0.5, 'true' -> True; else as given."""
    if not isinstance(value, str):
        return value
    loaded = yaml.safe_load(value) if value.strip() else value
    return loaded if isinstance(loaded, (int, float, bool)) else value


def job_spec(plan: SizingPlan, options: JobOptions = JobOptions()) -> dict[str, Any]:
    """The command job as a dict, in azureml-examples key order. Every setting
    is an input passed as a flag; booleans (no value to pass) are plain flags."""
    settings = _tune_settings(plan, options)
    gpu = plan.gpus_per_trial > 0
    compute = options.compute or ("gpu-cluster" if gpu else "cpu-cluster")
    inputs = {k: v for k, v in settings.items() if not isinstance(v, bool)}
    flags = [f"--{k.replace('_', '-')} ${{{{inputs.{k}}}}}" for k in inputs]
    flags += [f"--{'' if v else 'no-'}{k.replace('_', '-')}" for k, v in settings.items()
              if isinstance(v, bool)]
    flags.append(f"--storage-path ${{{{outputs.{STORAGE_OUTPUT}}}}}")
    shm = options.shm_size or (f"{max(2, plan.memory_gib_per_node // 2)}g"
                               if plan.memory_gib_per_node else "8g")
    if not re.fullmatch(r"[1-9]\d*[bkmg]", shm):
        _fail("shm_size", f"must be <number><unit> with unit b, k, m or g, but got {shm!r}; "
              "e.g. --shm-size 16g")
    spec: dict[str, Any] = {
        "$schema": JOB_SCHEMA,
        "code": "../src",
        "command": " ".join([f"python {ENTRY_SCRIPT}", *flags]),
        "inputs": inputs,
        "outputs": {STORAGE_OUTPUT: {"type": "uri_folder", "mode": "rw_mount"}},
        "environment": options.environment or (GPU_ENVIRONMENT if gpu else CPU_ENVIRONMENT),
        "compute": compute if compute.startswith("azureml:") else f"azureml:{compute}",
        # Azure ML starts Ray on every node (head on the first); the dashboard
        # needs ray[default], which the environment does not install.
        "distribution": {"type": "ray", "include_dashboard": False},
        "resources": {"instance_count": plan.instance_count, "shm_size": shm},
        "environment_variables": {RAY_NODES_ENV: str(plan.instance_count)},
        "experiment_name": options.experiment_name,
    }
    if options.display_name:
        spec["display_name"] = options.display_name
    return spec


def dump_job_spec(spec: Mapping[str, Any], plan: SizingPlan, render_args: Sequence[str]) -> str:
    """YAML text of ``spec``: a header saying how to re-render it, the command
    folded one flag per line (YAML joins the lines with spaces)."""
    def dump(part: dict) -> str:
        return yaml.safe_dump(part, sort_keys=False, default_flow_style=False, width=1000) if part else ""

    keys = list(spec)
    head = {k: spec[k] for k in keys[:keys.index("command")]}
    tail = {k: spec[k] for k in keys[keys.index("command") + 1:]}
    command = spec["command"].replace(" --", "\n  --")
    header = [
        f"# Rendered by: pbtflow aml render {shlex.join(render_args)} -o FILE",
        f"# Plan ({plan.mode}): {plan.population} trials, {plan.trials_per_node} per {plan.node_label} "
        f"node, {plan.concurrent_trials} at once on {plan.instance_count} node"
        f"{'s' if plan.instance_count > 1 else ''}; re-render to resize.",
        "# compute, environment and experiment_name are yours to change; the compute",
        f"# cluster's VM size must stay {plan.node_label}.",
    ]
    return "\n".join(header) + "\n" + dump(head) + f"command: >-\n  {command}\n" + dump(tail)


def _azure_ml():
    try:
        import azure.ai.ml as aml
    except ImportError:
        raise AzureMLError(f"azure: the Azure ML SDK (azure-ai-ml) is not installed; "
                           f"{_INSTALL_HINT}.") from None
    return aml


@contextmanager
def _quiet_azure() -> Iterator[None]:
    """The SDK logs a warning per experimental class (Ray distribution is one)
    and one per credential it tries; pbtflow says what went wrong in one sentence."""
    loggers = [logging.getLogger(name) for name in ("azure", "azure.ai.ml")]  # the SDK sets its own
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _first_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def _schema_problems(exc: BaseException) -> str:
    """The field errors inside azure-ai-ml's nested validation message, e.g.
    "resources.instance_count: Not a valid integer."; else its first words."""
    def json_after_failed(text: str) -> Any:
        start = text.find("{", text.find("failed:"))
        try:
            return json.JSONDecoder().raw_decode(text[start:])[0] if start >= 0 else None
        except ValueError:
            return None

    def leaves(node: Any, path: str) -> list[str]:
        if isinstance(node, dict):
            return [leaf for key, value in node.items()
                    for leaf in leaves(value, f"{path}.{key}" if path else str(key))]
        if isinstance(node, list) and node and all(isinstance(n, dict) for n in node):
            # alternatives of a union field: report the closest one
            return min((leaves(n, path) for n in node), key=len)
        if isinstance(node, list):
            return [f"{path}: {item}" for item in node if isinstance(item, str)]
        return [f"{path}: {node}"]

    found = json_after_failed(str(exc))
    if isinstance(found, dict) and isinstance(found.get("errors"), list) and found["errors"]:
        found = json_after_failed(str(found["errors"][0].get("message", "")))  # load_job nests it
    if isinstance(found, dict) and found:
        return "; ".join(dict.fromkeys(leaves(found, "")))[:300]
    return _first_line(exc)


def tune_flags() -> set[str]:
    """Every flag ``pbtflow tune`` accepts (generated from the Experiment, as in cli.py)."""
    import dataclasses

    flags = {"--config"}
    for f in dataclasses.fields(Experiment):
        if f.metadata.get("cli", True) is False:
            continue
        flag = "--" + f.name.replace("_", "-")
        flags.add(flag)
        if str(f.type).startswith("bool"):
            flags.add("--no-" + f.name.replace("_", "-"))
    return flags


def validate_job_file(path: str | Path) -> Any:
    """Load a job spec with ``azure.ai.ml.load_job`` (offline) and check what
    it does not: instance_count a whole number >= 1, every ``${{inputs.x}}`` /
    ``${{outputs.x}}`` defined, every flag a ``pbtflow tune`` flag, the entry
    script inside ``code``, and the expected node count equal to instance_count.
    Returns the loaded job."""
    path = Path(path)
    if not path.is_file():
        _fail("job", f"no such file {str(path)!r}; pass a job spec such as jobs/ppo-parallel.yml")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        _fail("job", f"{str(path)!r} is not valid YAML{where} ({getattr(exc, 'problem', None) or exc}); "
              "fix the file")
    if not isinstance(raw, dict):
        _fail("job", f"{str(path)!r} must hold a mapping of job fields, but holds "
              f"{type(raw).__name__}; fix the file")
    aml = _azure_ml()
    try:
        with _quiet_azure():
            job = aml.load_job(path)
    except Exception as exc:  # marshmallow ValidationError, azure ValidationException
        _fail("job", f"{str(path)!r} is not a valid Azure ML job spec ({_schema_problems(exc)}); "
              "fix the file")

    resources = raw.get("resources") or {}
    count = resources.get("instance_count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        _fail("instance_count", f"must be a whole number of nodes, 1 or more, but got {count!r} in "
              f"{path.name}; fix resources.instance_count (or re-render with pbtflow aml render)")
    command = str(raw.get("command", ""))
    declared = {"inputs": set(raw.get("inputs") or {}), "outputs": set(raw.get("outputs") or {})}
    for kind, name in _REFERENCE.findall(command):
        if name not in declared[kind]:
            _fail("command", f"references ${{{{{kind}.{name}}}}}, but {path.name} defines no "
                  f"{kind}.{name}; add it under {kind}: or fix the name")
    if ENTRY_SCRIPT in command:
        code = raw.get("code")
        if not code or not (path.parent / str(code) / ENTRY_SCRIPT).is_file():
            _fail("code", f"must be the folder holding {ENTRY_SCRIPT}, but got {code!r} in "
                  f"{path.name}; use code: ../src")
        known = tune_flags()
        for flag in re.findall(r"(?<!\S)(--[\w-]+)", command):
            if flag not in known:
                _fail("command", f"{flag} is not a `pbtflow tune` flag, but {path.name} passes it; "
                      "see `pbtflow tune --help`")
    nodes = (raw.get("environment_variables") or {}).get(RAY_NODES_ENV)
    if nodes is not None and str(nodes) != str(count):
        _fail(RAY_NODES_ENV, f"must equal resources.instance_count ({count}), but got {nodes!r} in "
              f"{path.name}; the driver would wait for the wrong number of nodes")
    return job


def validate_environment_file(path: str | Path) -> Any:
    """Load an environment spec with ``azure.ai.ml.load_environment`` (offline)."""
    aml = _azure_ml()
    try:
        with _quiet_azure():
            environment = aml.load_environment(Path(path))
    except Exception as exc:
        _fail("environment", f"{str(path)!r} is not a valid Azure ML environment spec "
              f"({_schema_problems(exc)}); fix the file")
    if not (environment.image or environment.build):  # load_environment accepts neither
        _fail("environment", f"{str(path)!r} must name a base image (image:) or a Docker build "
              "context (build:), but has neither; add image: mcr.microsoft.com/azureml/...")
    return environment
