"""Azure ML: size a Ray cluster for a PBT population (parallel or round-robin),
render the command job spec from that plan, check job specs offline, and
submit them.

Only this module imports ``azure.ai.ml``, and only inside the functions that
need it: it comes with the ``azure`` extra (``pip install 'pbtflow[azure]'``).
Every bad input fails with one sentence naming the input and the fix, before
any client is built."""

from __future__ import annotations

import json
import logging
import math
import re
import shlex
import textwrap
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, NoReturn, Sequence

import yaml

from pbtflow.experiment import AzureMLError, Experiment, SettingError, field_names
from pbtflow.trainables import defaults_for, rllib_name

MODES = ("parallel", "round-robin")
# The job sets this to its instance_count; the driver waits until that many
# Ray nodes are alive before tuning (pbtflow.tuning._init_ray).
RAY_NODES_ENV = "PBTFLOW_RAY_NODES"
RAY_NODES_TIMEOUT_ENV = "PBTFLOW_RAY_NODES_TIMEOUT"  # seconds, default 600
# What tells a node of a job its rank. Azure ML does not document what a Ray
# distribution runs on each node; if it runs the command on every node, as it
# does for MPI and PyTorch, only rank 0 may drive the population. The names:
# AZUREML_CR_NODE_RANK (Azure ML's runtime, used by azureml-examples),
# NODE_RANK (documented for PyTorch jobs), OMPI_COMM_WORLD_RANK (MPI jobs, one
# process per node).
NODE_RANK_ENVS = ("AZUREML_CR_NODE_RANK", "NODE_RANK", "OMPI_COMM_WORLD_RANK")
JOB_SCHEMA = "https://azuremlschemas.azureedge.net/latest/commandJob.schema.json"
ENTRY_SCRIPT = "tune_ppo.py"
STORAGE_OUTPUT = "checkpoints"
_REFERENCE = re.compile(r"\$\{\{\s*(inputs|outputs)\.([A-Za-z_][\w]*)\s*\}\}")
_INSTALL_HINT = "pip install 'pbtflow[azure]'"


@dataclass(frozen=True)
class VmSize:
    cpus: int  # vCPUs
    gpus: int
    memory_gib: int


# Sources: the Azure VM size pages, learn.microsoft.com/azure/virtual-machines/sizes/<page>
# (vCPUs, memory GiB, GPUs per size). The sizing assumes that Ray, which counts a node's CPUs
# at `ray start`, sees all of its vCPUs (a dedicated Azure ML node).
VM_SIZES: dict[str, VmSize] = {
    # general-purpose/dsv5-series (current)
    "Standard_D4s_v5": VmSize(cpus=4, gpus=0, memory_gib=16),
    "Standard_D8s_v5": VmSize(cpus=8, gpus=0, memory_gib=32),
    "Standard_D16s_v5": VmSize(cpus=16, gpus=0, memory_gib=64),
    "Standard_D32s_v5": VmSize(cpus=32, gpus=0, memory_gib=128),
    # general-purpose/dsv2-series, dsv3-series, compute-optimized/fsv2-series: still running,
    # but end of life (retirement planned 2028-2029, sizes/lifecycle/retirements-and-capacity-
    # restrictions) and closed to new subscriptions since July 2026
    "Standard_DS3_v2": VmSize(cpus=4, gpus=0, memory_gib=14),
    "Standard_D4s_v3": VmSize(cpus=4, gpus=0, memory_gib=16),
    "Standard_D8s_v3": VmSize(cpus=8, gpus=0, memory_gib=32),
    "Standard_D16s_v3": VmSize(cpus=16, gpus=0, memory_gib=64),
    "Standard_F16s_v2": VmSize(cpus=16, gpus=0, memory_gib=32),
    # gpu-accelerated/ncast4v3-series: NVIDIA T4 16 GB
    "Standard_NC4as_T4_v3": VmSize(cpus=4, gpus=1, memory_gib=28),
    "Standard_NC8as_T4_v3": VmSize(cpus=8, gpus=1, memory_gib=56),
    "Standard_NC16as_T4_v3": VmSize(cpus=16, gpus=1, memory_gib=110),
    "Standard_NC64as_T4_v3": VmSize(cpus=64, gpus=4, memory_gib=440),
    # gpu-accelerated/nca100v4-series: NVIDIA A100 80 GB PCIe
    "Standard_NC24ads_A100_v4": VmSize(cpus=24, gpus=1, memory_gib=220),
    "Standard_NC48ads_A100_v4": VmSize(cpus=48, gpus=2, memory_gib=440),
    "Standard_NC96ads_A100_v4": VmSize(cpus=96, gpus=4, memory_gib=880),
    # gpu-accelerated/ndasra100v4-series and ndma100v4-series: 8x A100 40 GB / 80 GB
    "Standard_ND96asr_v4": VmSize(cpus=96, gpus=8, memory_gib=900),
    "Standard_ND96amsr_A100_v4": VmSize(cpus=96, gpus=8, memory_gib=1900),
    # gpu-accelerated/ncadsh100v5-series: NVIDIA H100 NVL 94 GB
    "Standard_NC40ads_H100_v5": VmSize(cpus=40, gpus=1, memory_gib=320),
    "Standard_NC80adis_H100_v5": VmSize(cpus=80, gpus=2, memory_gib=640),
    # gpu-accelerated/ndh100v5-series: 8x H100 80 GB
    "Standard_ND96isr_H100_v5": VmSize(cpus=96, gpus=8, memory_gib=1900),
}
# Sizes Azure has retired (sizes/lifecycle/retirements-and-capacity-restrictions).
RETIRED_VM_SIZES = {name: "the NCv3 series was retired by Azure on 2025-09-30"
                    for name in ("Standard_NC6s_v3", "Standard_NC12s_v3", "Standard_NC24s_v3",
                                 "Standard_NC24rs_v3")}
CPU_ENVIRONMENT = "azureml:pbtflow-cpu@latest"  # environments/cpu.yml
GPU_ENVIRONMENT = "azureml:pbtflow-gpu@latest"  # environments/gpu.yml


def _fail(key: str, message: str) -> NoReturn:
    raise SettingError(f"{key}: {message}.")


def node_rank() -> tuple[str, int] | None:
    """(variable, rank) of this node in a multi-node job, or None outside one."""
    import os

    for name in NODE_RANK_ENVS:
        raw = os.environ.get(name, "").strip()
        if raw:
            if not raw.isdigit():
                _fail(name, f"must be a node rank (0, 1, ...), but got {raw!r}; unset it outside "
                      "a multi-node job")
            return name, int(raw)
    return None


def find_vm_size(name: str) -> tuple[str, VmSize] | None:
    """The table entry for ``name`` (case-insensitive), or None."""
    for known, size in VM_SIZES.items():
        if known.lower() == name.strip().lower():
            return known, size
    return None


# -- sizing ----------------------------------------------------------------------------
@dataclass(frozen=True)
class SizingPlan:
    """How a population maps onto Azure ML nodes. A *slot* is room for one
    trial on one node; with fewer slots than trials Tune time-multiplexes them."""

    mode: str
    population: int
    cpus_per_trial: float
    gpus_per_trial: float
    cpus_per_trial_process: float
    num_env_runners: int
    cpus_per_env_runner: float
    vm_size: str | None
    cpus_per_node: int
    gpus_per_node: int
    memory_gib_per_node: int | None
    trials_per_node: int
    instance_count: int
    concurrent_trials: int
    trials_per_slot: int  # ceil(population / concurrent_trials)
    wall_time_factor: int  # about this many times the wall time of the parallel plan
    parallel_instance_count: int  # nodes that would run every trial at once

    @property
    def node_label(self) -> str:
        return self.vm_size or f"{self.cpus_per_node}-CPU"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def explain(self) -> str:
        """The plan in a few lines, for people."""
        gpu = f", {self.gpus_per_trial:g} GPU" if self.gpus_per_trial else ""
        runners = (f" (trial process {self.cpus_per_trial_process:g} + {self.num_env_runners} env "
                   f"runners x {self.cpus_per_env_runner:g})" if self.num_env_runners else "")
        lines = [
            f"mode:              {self.mode}",
            f"node:              {self.node_label}: {self.cpus_per_node} vCPUs, "
            f"{self.gpus_per_node} GPUs",
            f"one trial:         {self.cpus_per_trial:g} CPUs{runners}{gpu}",
            f"trials per node:   {self.trials_per_node}",
            f"instance_count:    {self.instance_count} (1 head + {self.instance_count - 1} worker "
            f"node{'s' if self.instance_count != 2 else ''})",
            f"concurrent trials: {self.concurrent_trials} of {self.population}",
        ]
        if self.mode == "parallel":
            lines.append(f"parallel:          every member trains at once; wall time is that of one member "
                         f"(idle slots: {self.instance_count * self.trials_per_node - self.population}).")
        else:
            lines.append(
                f"round-robin:       {self.population} trials share {self.concurrent_trials} slots, "
                f"up to {self.trials_per_slot} per slot: Tune pauses a member at a perturbation and "
                f"runs a waiting one, restored from its checkpoint, so the population takes about "
                f"{self.wall_time_factor}x the wall time of the parallel plan "
                f"(instance_count {self.parallel_instance_count}) on "
                f"{self.instance_count}/{self.parallel_instance_count} of its nodes.")
        return "\n".join(textwrap.fill(line, width=88, subsequent_indent=" " * 19) for line in lines)


def plan_cluster(population: int, num_env_runners: int = 0, cpus_per_env_runner: float = 1.0,
                 gpus_per_trial: float = 0.0, *, vm_size: str | None = None,
                 cpus_per_node: int | None = None, gpus_per_node: int | None = None,
                 mode: str = "parallel", instance_count: int | None = None,
                 cpus_per_trial_process: float = 1.0) -> SizingPlan:
    """Size the cluster: one trial needs ``cpus_per_trial_process +
    num_env_runners * cpus_per_env_runner`` CPUs (Experiment.cpus_per_trial)
    and ``gpus_per_trial`` GPUs and never spans nodes. *parallel*: enough nodes
    for every trial at once; *round-robin*: ``instance_count`` nodes (default 1)
    and trials take turns."""
    if not isinstance(population, int) or population < 2:
        _fail("population", f"PBT needs at least 2 members, but got {population!r}; "
              "pass --population 2 or more")
    if not isinstance(num_env_runners, int) or num_env_runners < 0:
        _fail("num_env_runners", f"must be 0 or more, but got {num_env_runners!r}")
    for key, value in (("cpus_per_env_runner", cpus_per_env_runner),
                       ("cpus_per_trial_process", cpus_per_trial_process)):
        if not value > 0:
            _fail(key, f"must be positive, but got {value!r}")
    if not gpus_per_trial >= 0:
        _fail("gpus_per_trial", f"must be 0 or more, but got {gpus_per_trial!r}")
    if mode not in MODES:
        _fail("mode", f"must be one of {', '.join(MODES)}, but got {mode!r}")

    memory = None
    if vm_size is not None and cpus_per_node is not None:
        _fail("vm_size", f"give the node size once, but got --vm-size {vm_size} and --cpus-per-node "
              f"{cpus_per_node}; keep one of them")
    if vm_size is not None:
        found = find_vm_size(vm_size)
        retired = next((why for name, why in RETIRED_VM_SIZES.items()
                        if name.lower() == vm_size.strip().lower()), None)
        if retired:
            _fail("vm_size", f"{vm_size} cannot be created any more ({retired}); pick a current "
                  "GPU size such as Standard_NC4as_T4_v3 (T4) or Standard_NC24ads_A100_v4 (A100)")
        if found is None:
            _fail("vm_size", f"{vm_size!r} is not in pbtflow's table of VM sizes "
                  f"({', '.join(VM_SIZES)}); pass its vCPUs as --cpus-per-node N "
                  "(and --gpus-per-node M) instead")
        if gpus_per_node is not None:
            _fail("gpus_per_node", f"{found[0]} has {found[1].gpus} GPUs, but got --gpus-per-node "
                  f"{gpus_per_node} as well; drop --gpus-per-node")
        vm_size, size = found
        cpus_per_node, gpus_per_node, memory = size.cpus, size.gpus, size.memory_gib
    elif cpus_per_node is None:
        _fail("cpus_per_node", "sizing needs the node size, but got neither --vm-size nor "
              f"--cpus-per-node; pass --vm-size (one of {', '.join(VM_SIZES)}) or --cpus-per-node N")
    gpus_per_node = 0 if gpus_per_node is None else gpus_per_node
    if not isinstance(cpus_per_node, int) or cpus_per_node < 1:
        _fail("cpus_per_node", f"must be a whole number of vCPUs, 1 or more, but got {cpus_per_node!r}")
    if not isinstance(gpus_per_node, int) or gpus_per_node < 0:
        _fail("gpus_per_node", f"must be a whole number, 0 or more, but got {gpus_per_node!r}")

    cpus_per_trial = cpus_per_trial_process + num_env_runners * cpus_per_env_runner
    label = vm_size or f"{cpus_per_node}-CPU"
    if cpus_per_trial > cpus_per_node + 1e-9:
        _fail("num_env_runners", f"one trial needs {cpus_per_trial:g} CPUs ({cpus_per_trial_process:g} "
              f"+ {num_env_runners} env runners x {cpus_per_env_runner:g}), but a {label} node has "
              f"{cpus_per_node}: a trial larger than one node cannot be placed; lower "
              "--num-env-runners or --cpus-per-env-runner, or pick a larger --vm-size")
    if gpus_per_trial > gpus_per_node + 1e-9:
        _fail("gpus_per_trial", f"one trial needs {gpus_per_trial:g} GPUs, but a {label} node has "
              f"{gpus_per_node}: a trial larger than one node cannot be placed; pick a GPU "
              "--vm-size (e.g. Standard_NC4as_T4_v3) or lower --gpus-per-trial")
    per_node = math.floor(cpus_per_node / cpus_per_trial + 1e-9)
    if gpus_per_trial > 0:
        per_node = min(per_node, math.floor(gpus_per_node / gpus_per_trial + 1e-9))
    parallel_nodes = math.ceil(population / per_node)

    if instance_count is not None and (not isinstance(instance_count, int) or instance_count < 1):
        _fail("instance_count", f"must be a whole number of nodes, 1 or more, but got {instance_count!r}")
    if mode == "parallel":
        if instance_count is not None and instance_count != parallel_nodes:
            _fail("instance_count", f"parallel mode runs all {population} trials at once on "
                  f"{parallel_nodes} {label} nodes ({per_node} trials per node), but got "
                  f"{instance_count}; drop --instance-count, or use --mode round-robin for fewer nodes")
        nodes = parallel_nodes
    else:
        nodes = 1 if instance_count is None else instance_count
        if nodes * per_node >= population:
            _fail("mode", f"round-robin needs fewer slots than trials, but {nodes} {label} node(s) "
                  f"run all {population} trials at once ({per_node} per node); use --mode parallel "
                  f"(instance_count {parallel_nodes}) or a smaller --instance-count")
    concurrent = min(population, nodes * per_node)
    per_slot = math.ceil(population / concurrent)
    return SizingPlan(
        mode=mode, population=population, cpus_per_trial=cpus_per_trial,
        gpus_per_trial=gpus_per_trial, cpus_per_trial_process=cpus_per_trial_process,
        num_env_runners=num_env_runners, cpus_per_env_runner=cpus_per_env_runner,
        vm_size=vm_size, cpus_per_node=cpus_per_node, gpus_per_node=gpus_per_node,
        memory_gib_per_node=memory, trials_per_node=per_node, instance_count=nodes,
        concurrent_trials=concurrent, trials_per_slot=per_slot, wall_time_factor=per_slot,
        parallel_instance_count=parallel_nodes,
    )


# -- rendering -------------------------------------------------------------------------
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


# -- checking job files offline ---------------------------------------------------------
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


# -- submitting ------------------------------------------------------------------------
def _workspace(workspace_config: str | None, subscription: str | None, resource_group: str | None,
               workspace: str | None) -> dict[str, str]:
    """Which workspace to submit to; fails offline, naming what is missing."""
    names = {"--subscription": subscription, "--resource-group": resource_group,
             "--workspace": workspace}
    given = [k for k, v in names.items() if v]
    if workspace_config and given:
        _fail("workspace", f"give the workspace once, but got --workspace-config and {', '.join(given)}; "
              "keep one of them")
    if workspace_config:
        config = Path(workspace_config)
        if not config.is_file():
            _fail("workspace_config", f"no such file {workspace_config!r}; download config.json from "
                  "the workspace's page in the Azure portal and pass its path")
        try:
            data = json.loads(config.read_text())
        except json.JSONDecodeError as exc:
            _fail("workspace_config", f"{workspace_config!r} is not valid JSON ({exc.msg}); download "
                  "config.json again from the Azure portal")
        keys = ("subscription_id", "resource_group", "workspace_name")
        missing = [k for k in keys if not (isinstance(data, dict) and data.get(k))]
        if missing:
            _fail("workspace_config", f"{workspace_config!r} must name {', '.join(keys)}, but lacks "
                  f"{', '.join(missing)}; download config.json again from the Azure portal")
        return {"subscription_id": data["subscription_id"],
                "resource_group_name": data["resource_group"],
                "workspace_name": data["workspace_name"]}
    missing = [k for k, v in names.items() if not v]
    if missing:
        _fail("workspace", f"submitting needs an Azure ML workspace, but got no "
              f"{', '.join(missing)}; pass --workspace-config PATH (config.json from the Azure portal) "
              "or all of --subscription, --resource-group and --workspace")
    return {"subscription_id": subscription, "resource_group_name": resource_group,
            "workspace_name": workspace}


def submit_job(path: str | Path, *, workspace_config: str | None = None,
               subscription: str | None = None, resource_group: str | None = None,
               workspace: str | None = None) -> str:
    """Validate and submit a job spec with ``MLClient`` and ``DefaultAzureCredential``;
    return the job's studio URL. Workspace and spec are checked before any
    client is built; a missing credential fails before anything is uploaded."""
    target = _workspace(workspace_config, subscription, resource_group, workspace)
    job = validate_job_file(path)
    try:
        from azure.core.exceptions import ClientAuthenticationError
        from azure.identity import DefaultAzureCredential
    except ImportError:
        raise AzureMLError(f"azure: azure-identity is not installed; {_INSTALL_HINT}.") from None
    try:
        with _quiet_azure():
            credential = DefaultAzureCredential()
            credential.get_token("https://management.azure.com/.default")
    except ClientAuthenticationError as exc:
        _fail("credentials", f"no Azure credential could sign in ({_first_line(exc).split('.')[0]}); "
              "run `az login`, or set AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_CLIENT_SECRET")
    client = _azure_ml().MLClient(credential=credential, **target)
    created = client.jobs.create_or_update(job)
    return created.studio_url or ""
