"""Sizing a Ray cluster on Azure ML for a PBT population: the VM table,
parallel (every member at once) or round-robin (members take turns), and how
a node of a job knows its rank."""

from __future__ import annotations

import math
import textwrap
from dataclasses import asdict, dataclass
from typing import Any, NoReturn

from pbtflow.experiment import SettingError

MODES = ("parallel", "round-robin")
# The job sets this to its instance_count; the driver waits until that many
# Ray nodes are alive before tuning (pbtflow.cluster.init_ray).
RAY_NODES_ENV = "PBTFLOW_RAY_NODES"
RAY_NODES_TIMEOUT_ENV = "PBTFLOW_RAY_NODES_TIMEOUT"  # seconds, default 600
# What tells a node of a job its rank. Azure ML does not document what a Ray
# distribution runs on each node; if it runs the command on every node, as it
# does for MPI and PyTorch, only rank 0 may drive the population. The names:
# AZUREML_CR_NODE_RANK (Azure ML's runtime, used by azureml-examples),
# NODE_RANK (documented for PyTorch jobs), OMPI_COMM_WORLD_RANK (MPI jobs, one
# process per node).
NODE_RANK_ENVS = ("AZUREML_CR_NODE_RANK", "NODE_RANK", "OMPI_COMM_WORLD_RANK")


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
