"""The ``pbtflow`` command. ``pbtflow tune`` takes every experiment setting as
a flag (generated from the Experiment dataclass, so names and help are
declared once); ``src/tune_ppo.py`` is ``pbtflow tune``."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import sys
import warnings
from pathlib import Path
from typing import Sequence

from pbtflow.experiment import Experiment, ExperimentError, SettingError, from_sources


def _add_experiment_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE",
                        help="YAML experiment file; flags given here override its values.")
    for f in dataclasses.fields(Experiment):
        if f.metadata.get("cli", True) is False:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.metadata.get("shown_default",
                                 "the trainable's preset" if f.default is None else f.default)
        help_text = f"{f.metadata['help']} (default: {default})"
        if str(f.type).startswith("bool"):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text)
        else:
            # Values stay strings here: the Experiment converts and validates
            # them, so a flag and a YAML key fail with the same message.
            several = str(f.type).startswith("tuple")
            parser.add_argument(flag, dest=f.name, metavar=f.metadata.get("metavar", f.name.upper()),
                                nargs="+" if several else None, default=argparse.SUPPRESS,
                                help=help_text)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one sentence and exit code 2, like every input error
        self.exit(2, f"{self.prog}: error: {message}; see --help.\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pbtflow", description="Population Based Training on Ray Tune, "
                     "tracked in MLflow.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    tune_parser = commands.add_parser("tune", help="run a PBT experiment",
                                      description="Run a PBT experiment; every trial is an MLflow "
                                      "child run under one parent run.")
    _add_experiment_flags(tune_parser)
    tune_parser.add_argument("--verbose", action="store_true",
                             help="show everything Ray, RLlib, gymnasium and MLflow print (by default "
                             "only pbtflow's own lines, its warnings and errors)")

    report = commands.add_parser("report", help="leaderboard and best schedule of a tuned experiment")
    which = report.add_mutually_exclusive_group(required=True)
    which.add_argument("--run-id", help="the parent run's id")
    which.add_argument("--experiment", help="MLflow experiment name; reports its latest parent run")
    report.add_argument("--tracking-uri", help="MLflow tracking URI (default: as for tune)")
    report.add_argument("--download", metavar="DIR",
                        help="also download the best trial's last checkpoint into DIR")

    check = commands.add_parser("check", help="reconcile a run's MLflow record with Ray's PBT log",
                                description="Compare what pbtflow logged to MLflow (exploits, donors, "
                                "hp/* at every step) with Ray's own pbt_global.txt and "
                                "pbt_policy_*.txt; tag the parent run with the outcome. Exit 0 when "
                                "the record is complete, 1 when it differs.")
    check.add_argument("--run-id", required=True, help="the parent run's id")
    check.add_argument("--tracking-uri", help="MLflow tracking URI (default: as for tune)")
    check.add_argument("--experiment-path", help="Ray's experiment folder (default: the folder the "
                       "run recorded in its pbtflow.storage tag)")

    sync = commands.add_parser("sync", help="upload metrics a run could not deliver to MLflow")
    sync.add_argument("file", help="the undelivered-metrics file the run named")

    replay = commands.add_parser("replay", help="retrain one member on the best schedule PBT found")
    replay.add_argument("--run-id", required=True, help="the parent run's id")
    replay.add_argument("--tracking-uri", help="MLflow tracking URI (default: as for tune)")

    _add_aml_commands(commands)
    return parser


def _add_aml_commands(commands) -> None:
    """`pbtflow aml size|render|submit`: Azure ML cluster sizing, job specs, submission."""
    from pbtflow.azureml import MODES, VM_SIZES

    aml = commands.add_parser("aml", help="Azure ML: size a Ray cluster, render and submit job specs",
                              description="Size a Ray cluster on Azure ML for parallel or "
                              "round-robin trials, render the job spec from that plan, submit it.")
    verbs = aml.add_subparsers(dest="aml_command", required=True, parser_class=_Parser)

    def sizing(parser: argparse.ArgumentParser) -> None:
        # What a member needs: the `pbtflow tune` settings, named and explained
        # as there; on a cluster a member's own process takes one CPU.
        fields = {f.name: f for f in dataclasses.fields(Experiment)}
        for name, default in (("population", None), ("num_env_runners", None),
                              ("cpus_per_env_runner", None), ("cpus_per_trial_process", 1.0),
                              ("gpus_per_trial", None)):
            f = fields[name]
            note = "" if default is None else f" (sizing a cluster: {default:g})"
            default = f.default if default is None else default
            if default is not None and not note:
                note = f" (default: {default:g})"
            kind = float if "float" in str(f.type) else int
            parser.add_argument("--" + name.replace("_", "-"), type=kind, required=default is None,
                                default=None if default is None else kind(default),
                                help=f.metadata["help"] + note)
        parser.add_argument("--vm-size", help=f"Azure VM size of the compute cluster: {', '.join(VM_SIZES)}")
        parser.add_argument("--cpus-per-node", type=int, help="vCPUs per node, for a VM size not listed")
        parser.add_argument("--gpus-per-node", type=int, help="GPUs per node, with --cpus-per-node")
        parser.add_argument("--mode", choices=MODES, default="parallel",
                            help="parallel: every trial at once; round-robin: fewer nodes, trials "
                            "take turns (default: parallel)")
        parser.add_argument("--instance-count", type=int,
                            help="nodes (round-robin: default 1; parallel: computed)")

    size = verbs.add_parser("size", help="explain the cluster a population needs")
    sizing(size)
    size.add_argument("--json", action="store_true", help="print the plan as one JSON object")

    render = verbs.add_parser("render", help="write an Azure ML command job spec sized by the plan")
    sizing(render)
    render.add_argument("--trainable", default="ppo", help="what the job tunes (default: ppo)")
    render.add_argument("--env", help="gymnasium env id, RLlib trainables only (default: the "
                        "trainable's: CartPole-v1, sac: Pendulum-v1)")
    render.add_argument("--preset", default=None,
                        help="search-space preset (default: cluster for ppo, else by the env's actions)")
    render.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="another `pbtflow tune` setting, passed as an input (repeatable)")
    render.add_argument("--compute", help="compute cluster name (default: cpu-cluster, or "
                        "gpu-cluster with --gpus-per-trial)")
    render.add_argument("--environment", help="Azure ML environment (default: "
                        "azureml:pbtflow-cpu@latest, or azureml:pbtflow-gpu@latest with "
                        "--gpus-per-trial)")
    render.add_argument("--experiment-name", default="pbtflow", help="Azure ML experiment name")
    render.add_argument("--display-name", help="job display name (default: the output file's name)")
    render.add_argument("--shm-size", help="shared memory for Ray's object store, e.g. 16g "
                        "(default: half the VM's memory)")
    render.add_argument("-o", "--output", metavar="FILE", help="write here (default: print)")

    submit = verbs.add_parser("submit", help="submit a job spec with azure-ai-ml, print its studio URL")
    submit.add_argument("job", help="job spec, e.g. jobs/ppo-parallel.yml")
    submit.add_argument("--workspace-config", metavar="PATH",
                        help="the workspace's config.json (from the Azure portal)")
    submit.add_argument("--subscription", help="Azure subscription id")
    submit.add_argument("--resource-group", help="resource group of the workspace")
    submit.add_argument("--workspace", help="Azure ML workspace name")


_RENDER_OPTIONS = ("trainable", "env", "preset", "compute", "environment", "experiment_name",
                   "display_name", "shm_size")
_SIZING_OPTIONS = ("population", "num_env_runners", "cpus_per_env_runner", "cpus_per_trial_process",
                   "gpus_per_trial", "vm_size", "cpus_per_node", "gpus_per_node", "mode",
                   "instance_count")


def _run_aml(args: argparse.Namespace) -> int:
    import json
    import shlex
    from pathlib import Path

    from pbtflow import azureml

    if args.aml_command == "submit":
        url = azureml.submit_job(args.job, workspace_config=args.workspace_config,
                                 subscription=args.subscription, resource_group=args.resource_group,
                                 workspace=args.workspace)
        print(f"pbtflow: submitted {args.job}: {url}")
        return 0
    plan = azureml.plan_cluster(**{k: getattr(args, k) for k in _SIZING_OPTIONS})
    if args.aml_command == "size":
        print(json.dumps(plan.to_dict()) if args.json else plan.explain())
        return 0
    settings = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SettingError(f"set: must be KEY=VALUE, but got {item!r}; e.g. --set stop_iters=50.")
        settings[key.strip().replace("-", "_")] = value
    display = args.display_name or (Path(args.output).stem if args.output else None)
    options = azureml.JobOptions(settings=settings, **{k: getattr(args, k) for k in _RENDER_OPTIONS
                                                       if k != "display_name"}, display_name=display)
    # The header of the file says how to re-render it: the same flags, in a fixed order.
    defaults = build_parser().parse_args(["aml", "render", "--population", "2"])
    render_args = []
    for key in _SIZING_OPTIONS + _RENDER_OPTIONS:
        value = getattr(args, key)
        if key == "population" or value != getattr(defaults, key):
            render_args += [f"--{key.replace('_', '-')}", f"{value:g}" if isinstance(value, float)
                            else str(value)]
    for item in args.set:
        render_args += ["--set", item]
    text = azureml.dump_job_spec(azureml.job_spec(plan, options), plan, render_args)
    if not args.output:
        print(text, end="")
        return 0
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text)
    print(f"pbtflow: wrote {args.output} ({shlex.quote(plan.node_label)} x {plan.instance_count})")
    print(plan.explain())
    return 0


def _run_replay(args: argparse.Namespace) -> int:
    from pbtflow.tuning import replay

    _, final, original = replay(args.run_id, args.tracking_uri)
    print(f"pbtflow: replay final metric {final} (original best {original})")
    return 0


def _run_report(args: argparse.Namespace) -> int:
    from pbtflow.report import format_report
    from pbtflow.records import download_best_checkpoint, load_experiment_record

    record = load_experiment_record(args.tracking_uri, args.run_id, args.experiment)
    print(format_report(record))
    if args.download:
        path = download_best_checkpoint(record, args.download)
        print(f"best checkpoint downloaded to {path}")
    return 0


def _run_check(args: argparse.Namespace) -> int:
    from pbtflow.record_check import check

    differences = check(args.tracking_uri, args.run_id, args.experiment_path)
    if not differences:
        print(f"pbtflow: record check of {args.run_id}: complete")
        return 0
    print(f"pbtflow: record check of {args.run_id}: {len(differences)} differences from Ray's PBT log")
    for difference in differences:
        print(f"  {difference}")
    return 1


def _run_tune(args: argparse.Namespace) -> int:
    from pbtflow.cluster import follow_the_head, follower_rank

    rank = follower_rank()
    if rank is not None:  # one driver per cluster: the head's
        follow_the_head(rank)
        return 0
    experiment = from_sources(args.config, tune_overrides(args))
    from pbtflow.tuning import tune  # Tune, MLflow: 2.5 s of imports a bad setting need not wait for

    with contextlib.nullcontext() if args.verbose else _quiet_console():
        results = tune(experiment, worker_logs=args.verbose)
    print(f"pbtflow: {len(results)} trials, {results.num_errors} errored; results in "
          f"{results.experiment_path}")
    return 0


def tune_overrides(args: argparse.Namespace) -> dict:
    """The experiment settings among `pbtflow tune`'s parsed flags."""
    return {k: v for k, v in vars(args).items() if k not in ("command", "config", "verbose")}


QUIET_LOGGERS = ("ray", "ray.rllib", "ray.tune", "ray.train", "ray.data", "mlflow", "gymnasium", "alembic")


@contextlib.contextmanager
def _quiet_console():
    """Only pbtflow's own lines on the console while tuning: Ray's, RLlib's
    and MLflow's informational messages and warnings, and the warnings Python
    raises inside them (deprecations, dtype casts), are left out; their errors
    and pbtflow's own warnings stay. What the members print is not forwarded
    (``tune(worker_logs=False)``); a member's error still reaches the user
    through pbtflow's sentence and the trial's error file. The loggers' levels
    and the warning filters are restored afterwards."""
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    with warnings.catch_warnings():
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", module=r"(ray|gymnasium|mlflow|torch|pydantic)(\.|$)")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        if args.command == "tune":
            return _run_tune(args)
        if args.command == "report":
            return _run_report(args)
        if args.command == "replay":
            return _run_replay(args)
        if args.command == "check":
            return _run_check(args)
        if args.command == "sync":
            from pbtflow.runs import sync

            rows, ended = sync(args.file)
            print(f"pbtflow: uploaded {rows} metric rows and {ended} run endings.")
            return 0
        if args.command == "aml":
            return _run_aml(args)
    except ExperimentError as exc:  # exit code by kind: 2 setting, 3 tracking, 4 cluster, 5 Azure ML
        print(f"pbtflow: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("pbtflow: interrupted.", file=sys.stderr)
        return 130
    except Exception as exc:
        from pbtflow.runs import TuningInterrupted

        if isinstance(exc, TuningInterrupted):
            command = ("python src/tune_ppo.py" if Path(sys.argv[0]).name == "tune_ppo.py"
                       else "pbtflow tune")
            print(f"pbtflow: {TuningInterrupted(exc.path, command)}", file=sys.stderr)
            return 130
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
