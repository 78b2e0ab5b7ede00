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
    return parser


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
    except ExperimentError as exc:
        print(f"pbtflow: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pbtflow: interrupted.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
