"""The tuned policy as an MLflow pyfunc model: observations in, the greedy
actions out. MLflow stores this file with the model ("models from code") and
runs it when the model is loaded, so the model needs RLlib, not pbtflow; pbtflow
never imports it (``policy.log_policy`` names it by path).

The model holds three parts of the member's RLlib checkpoint: its RLModule
(the networks), and the env runner's connector pipelines on either side, so
that observations are normalised with the member's own running statistics
(MeanStdFilter, frozen here) and actions leave the policy as the environment
takes them (unsquashed into a Box's bounds, for example)."""

from pathlib import Path

import mlflow
import numpy as np
from gymnasium.spaces import Discrete

# The checkpoint's parts the model holds, as RLlib lays them out.
ENV_TO_MODULE = ("env_runner", "env_to_module_connector")
MODULE_TO_ENV = ("env_runner", "module_to_env_connector")
RL_MODULE = ("learner_group", "learner", "rl_module", "default_policy")


class Policy(mlflow.pyfunc.PythonModel):
    """A batch of observations (rows) in, one greedy action per row out."""

    def load_context(self, context):
        from ray.rllib.connectors.env_to_module import EnvToModulePipeline
        from ray.rllib.connectors.env_to_module.mean_std_filter import MeanStdFilter
        from ray.rllib.connectors.module_to_env import ModuleToEnvPipeline
        from ray.rllib.core.rl_module.rl_module import RLModule

        root = Path(context.artifacts["policy"])
        self.env_to_module = EnvToModulePipeline.from_checkpoint(str(root.joinpath(*ENV_TO_MODULE)))
        self.module_to_env = ModuleToEnvPipeline.from_checkpoint(str(root.joinpath(*MODULE_TO_ENV)))
        self.module = RLModule.from_checkpoint(str(root.joinpath(*RL_MODULE)))
        for piece in self.env_to_module.connectors:
            if isinstance(piece, MeanStdFilter):
                # Serving must not move the statistics the member trained with.
                piece._update_stats = False
        self.observation_space = self.env_to_module.input_observation_space
        self.action_space = self.env_to_module.input_action_space

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        import torch
        from ray.rllib.core.columns import Columns
        from ray.rllib.env.single_agent_episode import SingleAgentEpisode

        observations = np.asarray(model_input, dtype=self.observation_space.dtype)
        if observations.shape == self.observation_space.shape:  # one observation
            observations = observations[None]
        episodes = [SingleAgentEpisode(observations=[obs], observation_space=self.observation_space,
                                       action_space=self.action_space) for obs in observations]
        shared = {}
        batch = self.env_to_module(episodes=episodes, rl_module=self.module, explore=False,
                                   shared_data=shared)
        with torch.no_grad():
            output = self.module.forward_inference(batch)
        to_env = self.module_to_env(batch=output, episodes=episodes, rl_module=self.module,
                                    explore=False, shared_data=shared)
        if Columns.ACTIONS_FOR_ENV in to_env:  # unsquashed into a Box's bounds
            actions = to_env[Columns.ACTIONS_FOR_ENV]
        else:
            actions = to_env[Columns.ACTIONS]
        dtype = np.int64 if isinstance(self.action_space, Discrete) else self.action_space.dtype
        return np.asarray(actions, dtype=dtype).reshape((len(observations),) + self.action_space.shape)


mlflow.models.set_model(Policy())
