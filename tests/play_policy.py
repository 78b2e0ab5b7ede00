"""Run in a fresh process by the tests: load a logged policy with
mlflow.pyfunc.load_model (the tracking URI from $MLFLOW_TRACKING_URI),
predict actions for a batch of observations, row by row, and again after a
batch of extreme observations, and play greedy episodes with it; say whether
loading it imported pbtflow. Prints one JSON object.

    python play_policy.py MODEL_URI ENV_ID FIRST_SEED EPISODES
"""

import json
import sys

import gymnasium
import mlflow
import numpy as np


def main(model_uri: str, env_id: str, seed: int, episodes: int) -> dict:
    model = mlflow.pyfunc.load_model(model_uri)
    env = gymnasium.make(env_id)
    batch = np.stack([env.reset(seed=seed + i)[0] for i in range(8)])
    actions = model.predict(batch)
    rows = [model.predict(batch[i:i + 1])[0] for i in range(len(batch))]
    # Serving must not move the member's observation statistics: observations
    # far from any it trained on would shift a filter that kept learning.
    model.predict(np.repeat(batch * 50.0 + 25.0, 64, axis=0).astype(batch.dtype))
    after = model.predict(batch)
    returns = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + 100 + episode)
        total, done = 0.0, False
        while not done:
            action = model.predict(obs[None])[0]
            assert env.action_space.contains(action), action
            obs, reward, terminated, truncated, _ = env.step(action)
            total, done = total + float(reward), terminated or truncated
        returns.append(total)
    schema = model.metadata.get_input_schema().inputs[0]
    return {"actions": np.asarray(actions).tolist(), "again": np.asarray(after).tolist(),
            "pbtflow_imported": any(name.split(".")[0] == "pbtflow" for name in sys.modules),
            "rows": np.asarray(rows).tolist(), "dtype": str(np.asarray(actions).dtype),
            "input_shape": list(schema.shape), "returns": returns}


if __name__ == "__main__":
    uri, env_id, seed, episodes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    print(json.dumps(main(uri, env_id, seed, episodes)))
