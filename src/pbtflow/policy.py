"""The tuned agent as a deliverable: the best member's policy logged as an
MLflow pyfunc model under the parent run (an MLflow 3 logged model linked to
it, with its signature and an input example), and registered in the model
registry when the user names it. The model itself is ``policy_model.py``."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from pbtflow import names

log = logging.getLogger(__name__)

MODEL_CODE = Path(__file__).with_name("policy_model.py")
# The checkpoint's parts the model holds (see policy_model.py).
PARTS = (("env_runner", "env_to_module_connector"), ("env_runner", "module_to_env_connector"),
         ("learner_group", "learner", "rl_module", "default_policy"))
EXAMPLE_ROWS = 3


def requirements() -> list[str]:
    """What loading the model needs: RLlib and torch at the versions that trained it."""
    import ray
    import torch

    return [f"ray[rllib]=={ray.__version__}", f"torch=={torch.__version__.split('+')[0]}"]


def signature_and_example(env_id: str, seed: int):
    """The model's signature (a batch of observations in, one action per row
    out) and an input example (first observations of ``env_id`` on fresh
    seeds); None when the environment's spaces are not a Box of observations
    and a Box or Discrete of actions."""
    import gymnasium
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    env = gymnasium.make(env_id)
    try:
        observations, actions = env.observation_space, env.action_space
        if not isinstance(observations, gymnasium.spaces.Box) or not isinstance(
                actions, (gymnasium.spaces.Box, gymnasium.spaces.Discrete)):
            return None
        example = np.stack([env.reset(seed=seed + i)[0] for i in range(EXAMPLE_ROWS)])
    finally:
        env.close()
    action_dtype = np.dtype(np.int64) if isinstance(actions, gymnasium.spaces.Discrete) else actions.dtype
    signature = ModelSignature(
        inputs=Schema([TensorSpec(observations.dtype, (-1, *observations.shape))]),
        outputs=Schema([TensorSpec(action_dtype, (-1, *actions.shape))]))
    return signature, example.astype(observations.dtype)


def _load(staged: Path):
    """The model as MLflow will run it: ``policy_model.py``'s Policy loaded
    from the staged parts."""
    import runpy

    from mlflow.pyfunc import PythonModelContext

    model = runpy.run_path(str(MODEL_CODE))["Policy"]()
    model.load_context(PythonModelContext(artifacts={"policy": str(staged)}, model_config=None))
    return model


@contextlib.contextmanager
def _tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's process-wide tracking URI set to ``uri`` while MLflow logs the
    model (its model logging has no client-level variant), then exactly as it
    was: the environment variable, and a URI set with mlflow.set_tracking_uri
    (which wins over the variable) only if there was one."""
    import mlflow

    variable = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    overriding = mlflow.get_tracking_uri()
    if overriding != uri:
        mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        if overriding != uri:
            mlflow.set_tracking_uri(overriding)
        if variable is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = variable


def log_policy(tracking_uri: str, run_id: str, checkpoint: str, env_id: str, seed: int,
               register_as: str | None = None):
    """Log the policy in ``checkpoint`` as the MLflow model ``policy`` of run
    ``run_id``; with ``register_as``, also a new version of that registered
    model. Returns MLflow's ModelInfo, or None when the policy cannot be
    served this way (said in the log)."""
    from mlflow.models import Model
    import mlflow.pyfunc

    missing = [os.path.join(*part) for part in PARTS if not Path(checkpoint, *part).is_dir()]
    if missing:
        log.info("pbtflow: the best checkpoint has no %s, so its policy is not logged as an MLflow "
                 "model.", ", ".join(missing))
        return None
    described = signature_and_example(env_id, seed)
    if described is None:
        log.info("pbtflow: %s's observations are not a Box (or its actions neither a Box nor "
                 "Discrete), so the policy is not logged as an MLflow model.", env_id)
        return None
    signature, example = described
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp, "policy")
        for part in PARTS:
            shutil.copytree(Path(checkpoint, *part), staged.joinpath(*part))
        # One load, before anything is logged: MLflow itself only warns when
        # the input example fails to predict.
        model = _load(staged)
        if model.module.is_stateful():
            log.info("pbtflow: the best member's policy keeps a state between steps (a recurrent "
                     "model), which a model taking one batch of observations cannot carry, so it is "
                     "not logged as an MLflow model.")
            return None
        _check_predictions(model.predict(None, example), example, signature)
        with _tracking_uri(tracking_uri):
            info = Model.log(None, name=names.POLICY_MODEL, flavor=mlflow.pyfunc, run_id=run_id,
                             python_model=str(MODEL_CODE), artifacts={"policy": str(staged)},
                             signature=signature, input_example=example,
                             pip_requirements=requirements(), model_type="rl-policy")
            if register_as:
                # MLflow prints the registration to stderr; pbtflow says it in
                # its own line, MLflow's words go to its logger (--verbose).
                printed = io.StringIO()
                with contextlib.redirect_stderr(printed):
                    version = mlflow.register_model(info.model_uri, register_as)
                info.registered_model_version = version.version
                for line in filter(str.strip, printed.getvalue().splitlines()):
                    logging.getLogger("mlflow.models").info(line.strip())
        return info


def _check_predictions(actions, example: np.ndarray, signature) -> None:
    (expected,) = signature.outputs.inputs
    actions = np.asarray(actions)
    if actions.shape != (len(example), *expected.shape[1:]) or actions.dtype != expected.type:
        raise ValueError(f"the policy model predicts {actions.dtype} {actions.shape} for "
                         f"{len(example)} observations, not {expected.type} (-1, "
                         f"{', '.join(map(str, expected.shape[1:]))})")
