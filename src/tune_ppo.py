"""Tune RLlib PPO (or another trainable) with Population Based Training.

    python src/tune_ppo.py                # PPO on CartPole-v1, the discrete-action preset
    python src/tune_ppo.py --help         # every setting

Also the command of the Azure ML jobs in jobs/. Same as `pbtflow tune ...`.
"""

import sys

from pbtflow.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
