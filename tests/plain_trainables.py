"""Function trainables written the plain Ray way (``tune.report``,
``tune.get_checkpoint``), knowing nothing of pbtflow."""

import json
import os
import tempfile

from ray import tune


def climb(config):
    """Climbs at a rate set by ``lr`` and ``momentum``; checkpoints every step."""
    state = {"height": 0.0}
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            with open(os.path.join(folder, "state.json")) as f:
                state = json.load(f)
    while True:
        state["height"] += config["lr"] * (1.0 + config["momentum"]) - 0.1 * config["lr"] ** 2
        with tempfile.TemporaryDirectory() as folder:
            with open(os.path.join(folder, "state.json"), "w") as f:
                json.dump(state, f)
            tune.report({"height": state["height"]}, checkpoint=tune.Checkpoint.from_directory(folder))
