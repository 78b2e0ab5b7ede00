"""lr-schedule: Ray's PBT function example (ray/tune/examples/pbt_function.py).
Accuracy grows fastest at an optimal learning rate that rises and then falls with the accuracy (a
triangle), so a fixed lr never reaches ``done`` and PBT has to discover the
schedule. Written as a user would, with :mod:`pbtflow.checkpoint`."""

from __future__ import annotations

from typing import Any

from ray import tune

from pbtflow import checkpoint, names
from pbtflow.trainables import TrainableSpec
from pbtflow.trainables.function import spec

MIDPOINT = 100.0  # the optimal lr peaks at this accuracy
TARGET = 2 * MIDPOINT  # done when the accuracy exceeds this
Q_TOLERANCE = 3.0  # an lr more than this factor off the optimum stops progress
NOISE = 2.0  # standard deviation of the accuracy's per-step noise
LR_LOW, LR_HIGH = 0.001, 0.01  # the optimal lr's clamp

INITIAL = {"lr": 1e-4}
MUTATIONS = {"lr": tune.uniform(1e-4, 0.02)}
LOGGED_METRICS = (names.MEAN_ACCURACY, "cur_lr", "optimal_lr", "q_err", names.TRAINING_ITERATION)


def optimal_lr(accuracy: float) -> float:
    """The triangle: 0.01 * a / 100 up to a = 100, then down again, clamped."""
    if accuracy < MIDPOINT:
        lr = 0.01 * accuracy / MIDPOINT
    else:
        lr = 0.01 - 0.01 * (accuracy - MIDPOINT) / MIDPOINT
    return min(LR_HIGH, max(LR_LOW, lr))


def step(accuracy: float, lr: float, uniform: float, normal: float) -> tuple[float, float, float]:
    """One training step: (new accuracy, optimal lr, q_err), given a U(0, 1) and
    an N(0, 1) draw (arguments, so that the rule is testable on its own)."""
    best = optimal_lr(accuracy)
    q_err = max(lr, best) / min(lr, best)
    if q_err < Q_TOLERANCE:
        accuracy += uniform / q_err
    elif lr > best:
        accuracy -= (q_err - Q_TOLERANCE) * uniform
    accuracy += NOISE * normal
    return max(0.0, accuracy), best, q_err


def train(config: dict[str, Any]) -> None:
    """The function trainable: one reported result per step until ``done``."""
    lr = float(config["lr"])
    run = checkpoint.resume({"accuracy": 0.0})
    while True:
        accuracy, best, q_err = step(run.state["accuracy"], lr, run.rng.random(), run.rng.normal())
        run.state["accuracy"] = accuracy
        run.report({names.MEAN_ACCURACY: accuracy, "cur_lr": lr, "optimal_lr": best,
                    "q_err": q_err, names.DONE: accuracy > TARGET})
        if accuracy > TARGET:
            return


def build(experiment) -> TrainableSpec:
    return spec(train, experiment, metric=names.MEAN_ACCURACY, initial=INITIAL,
                mutations=MUTATIONS, logged_metrics=LOGGED_METRICS)
