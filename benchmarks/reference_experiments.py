"""The two reference experiments with PBT and their no-PBT baselines, side by
side, seeded; prints the claims table and refreshes the pictures README
shows (benchmarks/pictures/).

- quadratic (the PBT paper's Figure 2): PBT vs the grid over the same two
  starting points h = (1, 0) and (0, 1), 100 steps;
- lr-schedule (Ray's PBT function example): PBT from lr 1e-4 vs the same
  population with lr fixed at 1e-4 (grid) and with lr drawn once from the
  mutation range U(1e-4, 0.02) (random), 1000 steps each.

Every run is an MLflow parent run (baselines tagged pbtflow.baseline=grid|random)
in ./mlflow.db unless --tracking-uri says otherwise.

    python benchmarks/reference_experiments.py [--seed 0] [--pictures benchmarks/pictures]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pbtflow
from pbtflow import names
from pbtflow.trainables import lr_schedule

REPO = Path(__file__).resolve().parents[1]
README_PICTURES = {  # one of each kind, for README
    "quadratic": ["quadratic_paths.png", "quadratic_q.png", "quadratic_paths.gif"],
    "lr-schedule": ["lr_schedule.png"],
}


def _run(trainable: str, seed: int, baseline: str | None, tracking_uri: str | None):
    return pbtflow.tune(pbtflow.Experiment(trainable=trainable, seed=seed, baseline=baseline,
                                           tracking_uri=tracking_uri,
                                           experiment_name=f"reference-{trainable}"))


def _first_done(results) -> str:
    steps = []
    for r in results:
        frame = r.metrics_dataframe
        hit = frame.loc[frame[names.MEAN_ACCURACY] > lr_schedule.TARGET, names.TRAINING_ITERATION]
        if len(hit):
            steps.append(int(hit.min()))
    return f"{min(steps)} ({len(steps)} of {len(results)} members done)" if steps else "never"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pictures", default=str(REPO / "benchmarks" / "pictures"),
                        help="where the pictures README shows go")
    parser.add_argument("--tracking-uri", default=None)
    args = parser.parse_args()
    pictures = Path(args.pictures)
    pictures.mkdir(parents=True, exist_ok=True)

    rows = []
    for kind in (None, "grid"):
        results = _run("quadratic", args.seed, kind, args.tracking_uri)
        best = [r.metrics_dataframe[names.Q].max() for r in results]
        rows.append(("quadratic", kind or "PBT", "best Q per member (>= 1.19?)",
                     ", ".join(f"{q:.4f}" for q in best)))
        if kind is None:
            for name in README_PICTURES["quadratic"]:
                shutil.copy(Path(results.experiment_path) / "plots" / name, pictures / name)
    for kind in (None, "grid", "random"):
        results = _run("lr-schedule", args.seed, kind, args.tracking_uri)
        best = max(r.metrics_dataframe[names.MEAN_ACCURACY].max() for r in results)
        rows.append(("lr-schedule", kind or "PBT", "steps to first done; best accuracy",
                     f"{_first_done(results)}; {best:.1f}"))
        if kind is None:
            for name in README_PICTURES["lr-schedule"]:
                shutil.copy(Path(results.experiment_path) / "plots" / name, pictures / name)

    print(f"\nseed {args.seed}\n")
    print("| experiment | run | measure | result |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\npictures copied to {pictures}")


if __name__ == "__main__":
    main()
