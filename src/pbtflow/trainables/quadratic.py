"""quadratic: the PBT paper's toy (arXiv 1711.09846, Figure 2).
Training ascends a surrogate ``Qhat(theta | h)`` whose hyperparameters ``h``
decide which coordinates move; the true objective ``Q`` needs both. Each of
the two starting points moves one coordinate only, so only PBT (copying theta
and exploring h) reaches Q = 1.2. Written with :mod:`pbtflow.checkpoint`."""

from __future__ import annotations

from typing import Any

import numpy as np
from ray import tune

from pbtflow import checkpoint, names
from pbtflow.trainables import TrainableSpec
from pbtflow.trainables.function import spec

Q_MAX = 1.2
THETA_START = (0.9, 0.9)
SCALE = np.array([0.75, 1.0])  # Q's weights; also scales the first gradient component

# The paper's two members: h = (1, 0) and h = (0, 1); lr as in Ray's PBT visualisation.
STARTING_POINTS = [{"h0": 1.0, "h1": 0.0}, {"h0": 0.0, "h1": 1.0}]
INITIAL = {"lr": 0.05}
MUTATIONS = {
    "lr": tune.qloguniform(5e-3, 1e-1, 5e-4),
    "h0": tune.uniform(0.0, 1.0),
    "h1": tune.uniform(0.0, 1.0),
}
LOGGED_METRICS = (names.Q, "Qhat", "theta0", "theta1", "h0", "h1", names.TRAINING_ITERATION)


def q_true(theta: np.ndarray) -> float:
    """Q(theta) = 1.2 - (0.75 theta0^2 + theta1^2)."""
    return float(Q_MAX - np.sum(SCALE * np.square(theta)))


def q_hat(theta: np.ndarray, h: np.ndarray) -> float:
    """Qhat(theta | h) = 1.2 - (h0 theta0^2 + h1 theta1^2)."""
    return float(Q_MAX - np.sum(h * np.square(theta)))


def ascend(theta: np.ndarray, h: np.ndarray, lr: float) -> np.ndarray:
    """One gradient-ascent step on Qhat: grad = -2 h theta, first component x 0.75."""
    grad = -2.0 * h * theta
    grad[0] *= SCALE[0]
    return theta + lr * grad


def train(config: dict[str, Any]) -> None:
    """The function trainable: one step per reported result; Tune stops it."""
    h = np.array([config["h0"], config["h1"]], dtype=float)
    lr = float(config["lr"])
    run = checkpoint.resume({"theta": list(THETA_START)})
    while True:
        theta = ascend(np.asarray(run.state["theta"], dtype=float), h, lr)
        run.state["theta"] = theta.tolist()
        run.report({names.Q: q_true(theta), "Qhat": q_hat(theta, h), "theta0": theta[0],
                    "theta1": theta[1], "h0": h[0], "h1": h[1]})


def build(experiment) -> TrainableSpec:
    # The first two members start at the paper's points; more members sample h
    # from its mutation domains. An h given in `initial` replaces the points.
    initial = {**INITIAL, "h0": MUTATIONS["h0"], "h1": MUTATIONS["h1"]}
    own = set(experiment.initial or {})
    points = None if own & {"h0", "h1"} else list(STARTING_POINTS)
    return spec(train, experiment, metric=names.Q, initial=initial, mutations=MUTATIONS,
                logged_metrics=LOGGED_METRICS, points_to_evaluate=points)
