"""Azure ML: size a Ray cluster for a PBT population (parallel or round-robin),
render the command job spec from that plan, check job specs offline, and
submit them.

Only this module imports ``azure.ai.ml``, and only inside the functions that
need it: it comes with the ``azure`` extra (``pip install 'pbtflow[azure]'``).
Every bad input fails with one sentence naming the input and the fix, before
any client is built."""

from pbtflow.azureml.sizing import (
    MODES, NODE_RANK_ENVS, RAY_NODES_ENV, RAY_NODES_TIMEOUT_ENV, RETIRED_VM_SIZES, VM_SIZES, SizingPlan,
    VmSize, find_vm_size, node_rank, plan_cluster)
from pbtflow.azureml.specs import (
    CPU_ENVIRONMENT, GPU_ENVIRONMENT, JobOptions, dump_job_spec, job_spec, tune_flags,
    validate_environment_file, validate_job_file)
from pbtflow.azureml.submission import submit_job

__all__ = ["MODES", "NODE_RANK_ENVS", "RAY_NODES_ENV", "RAY_NODES_TIMEOUT_ENV", "RETIRED_VM_SIZES", "VM_SIZES",
           "SizingPlan", "VmSize", "find_vm_size", "node_rank", "plan_cluster", "CPU_ENVIRONMENT",
           "GPU_ENVIRONMENT", "JobOptions", "dump_job_spec", "job_spec", "tune_flags",
           "validate_environment_file", "validate_job_file", "submit_job"]
