"""The ``pbtflow`` command. ``pbtflow tune`` takes every experiment setting as
a flag (generated from the Experiment dataclass, so names and help are
declared once); ``src/tune_ppo.py`` is ``pbtflow tune``."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from typing import Sequence

from pbtflow.experiment import Experiment, ExperimentError, from_sources


def _add_experiment_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE",
                        help="YAML experiment file; flags given here override its values.")
    for f in dataclasses.fields(Experiment):
        if f.metadata.get("cli", True) is False:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = "the trainable's preset" if f.default is None else f.default
        help_text = f"{f.metadata['help']} (default: {default})"
        if str(f.type).startswith("bool"):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text)
        else:
            # Values stay strings here: the Experiment converts and validates
            # them, so a flag and a YAML key fail with the same message.
            parser.add_argument(flag, dest=f.name, metavar=f.name.upper(), default=argparse.SUPPRESS,
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

    report = commands.add_parser("report", help="leaderboard and best schedule of a tuned experiment")
    which = report.add_mutually_exclusive_group(required=True)
    which.add_argument("--run-id", help="the parent run's id")
    which.add_argument("--experiment", help="MLflow experiment name; reports its latest parent run")
    report.add_argument("--latest", action="store_true",
                        help="with --experiment: the latest parent run (the default)")
    report.add_argument("--tracking-uri", help="MLflow tracking URI (default: as for tune)")
    report.add_argument("--download", metavar="DIR",
                        help="also download the best trial's last checkpoint into DIR")
    return parser


def _run_report(args: argparse.Namespace) -> int:
    from pbtflow.report import format_report
    from pbtflow.tracking import download_best_checkpoint, load_experiment_record

    record = load_experiment_record(args.tracking_uri, args.run_id, args.experiment)
    print(format_report(record))
    if args.download:
        path = download_best_checkpoint(record, args.download)
        print(f"best checkpoint downloaded to {path}")
    return 0


def _run_tune(args: argparse.Namespace) -> int:
    from pbtflow.tuning import tune

    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    experiment = from_sources(args.config, overrides)
    results = tune(experiment)
    print(f"pbtflow: {len(results)} trials, {results.num_errors} errored; results in "
          f"{results.experiment_path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        if args.command == "tune":
            return _run_tune(args)
        if args.command == "report":
            return _run_report(args)
    except ExperimentError as exc:
        print(f"pbtflow: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pbtflow: interrupted.", file=sys.stderr)
        return 130
    except Exception as exc:
        from pbtflow.tracking import TuningInterrupted

        if isinstance(exc, TuningInterrupted):
            print(f"pbtflow: {exc}", file=sys.stderr)
            return 130
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
