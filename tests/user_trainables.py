"""Function trainables written as a user would, for the tests: they use
pbtflow.checkpoint and nothing else from pbtflow."""

import json
import os

from ray import tune

from pbtflow import checkpoint

NOT_A_FUNCTION = 42


def counting(config):
    """Reports its own step counter, to check that resuming continues at the
    saved step + 1 (then it always equals Tune's training_iteration)."""
    run = checkpoint.resume({"restores": 0})
    if run.resumed:
        run.state["restores"] += 1
    while True:
        run.report({"score": float(config["x"]) * run.step, "step": run.step,
                    "restores": run.state["restores"]})


def declining(config):
    """A score that drops with every step, at a level set by ``x``: a donor's
    newest checkpoint scores below its older ones, so retention by score
    deletes it as soon as the donor has moved on."""
    run = checkpoint.resume({})
    while True:
        run.report({"score": 100.0 * float(config["x"]) - run.step})


def two_arguments(config, extra):
    return None


def slow_counting(config):
    """Like `counting`, but each step takes `sleep` seconds: long enough to
    stop and restart a tracking server while it runs."""
    import time

    run = checkpoint.resume({})
    while True:
        time.sleep(float(config.get("sleep", 0.2)))
        run.report({"score": float(config["x"]) * run.step})


def broken(config):
    """Fails before its first report, as a trainable with a bug does."""
    run = checkpoint.resume({})
    scale = config["x"] / 0.0  # the bug
    run.report({"score": scale})


def silent(config):
    """Returns without ever reporting."""
    return None


def blocking(config):
    """Reports three steps, then blocks, as a trainable stuck on I/O does."""
    import time

    run = checkpoint.resume({})
    while run.step <= 3:
        run.report({"score": float(config["x"]) * run.step})
    time.sleep(3600)


def momentum_follows_lr(config):
    """An explore function: a user's rule tying two mutated values together."""
    config["momentum"] = 0.9 if config["lr"] >= 0.05 else 0.5
    return config


def explore_returns_nothing(config):
    config["lr"] = 0.05


def explore_changes_a_constant(config):
    config["start"] = 3.0
    return config


def explore_two_arguments(config, rng):
    return config


class Climber(tune.Trainable):
    """A class trainable the plain Ray way, without reset_config: Tune cannot
    reuse its worker for another member."""

    def setup(self, config):
        self.height = 0.0

    def step(self):
        self.height += self.config["lr"] * (1.0 + self.config["momentum"])
        return {"height": self.height}

    def save_checkpoint(self, checkpoint_dir):
        return {"height": self.height}

    def load_checkpoint(self, checkpoint):
        self.height = checkpoint["height"]


class FileClimber(Climber):
    """Climber whose checkpoint is a file a test can read: the height and the
    iteration it was saved at."""

    def save_checkpoint(self, checkpoint_dir):
        with open(os.path.join(checkpoint_dir, "height.json"), "w") as file:
            json.dump({"height": self.height, "iteration": self.iteration}, file)

    def load_checkpoint(self, checkpoint_dir):
        with open(os.path.join(checkpoint_dir, "height.json")) as file:
            self.height = json.load(file)["height"]


class NotATrainable:
    def __call__(self, config):
        return None
