"""Metric, tag and artifact names, defined once and shared by the trainables,
the scheduler and the tracking code."""

# Metrics the trainables report.
RETURN_MEAN = "env_runners/episode_return_mean"
TRAINING_ITERATION = "training_iteration"
MEAN_ACCURACY = "mean_accuracy"  # lr-schedule toy
DONE = "done"  # lr-schedule: the member reached the target accuracy
Q = "Q"  # quadratic toy: the true objective

# Metric prefixes written to MLflow child runs.
HP_PREFIX = "hp/"  # the hyperparameter a member trained with at that step
EFFECTIVE_PREFIX = "effective/"  # the value the learner really used (PPO)
BEST_PREFIX = "best/"  # parent run: the best trial's final metric
EXPLOITS = "pbt/exploits"  # running count of exploits of one member
# Child runs of the members evaluated after tuning (greedy episodes, fresh seeds).
EVAL_RETURN_MEAN = "eval/episode_return_mean"
EVAL_RETURN_STD = "eval/episode_return_std"
EVAL_EPISODES = "eval/num_episodes"

# Exploit events (pbt_events.json).
UNDONE_AT = "undone_at_step"  # a resume undid the exploit after this member step

# Tags.
PARENT_RUN_ID = "mlflow.parentRunId"
TRIAL_ID = "pbtflow.trial_id"
TRIAL_NAME = "pbtflow.trial_name"
ROLE = "pbtflow.role"  # "parent" or "trial"
BEST_TRIAL = "best_trial"  # by evaluation when members were evaluated, else by training metric
BEST_BY_TRAINING = "pbtflow.best_trial_by_training"  # beside it, when members were evaluated
ERROR = "pbtflow.error"
BASELINE = "pbtflow.baseline"  # parent run of a no-PBT baseline: "grid" or "random"
REPLAY_OF = "pbtflow.replay_of"  # a replay's parent: the original parent run id
STORAGE = "pbtflow.storage"  # where Ray Tune keeps the experiment
DRIVER = "pbtflow.driver"  # parent: host:pid of the process driving the experiment
KILLED_BECAUSE = "pbtflow.killed_because"  # a run ended KILLED for its driver, and why
RECORD_CHECK = "pbtflow.record_check"  # parent: "complete", or the differences from Ray's PBT log

# Artifacts.
EXPERIMENT_FILE = "experiment.yaml"
EVENTS_FILE = "pbt_events.json"  # child run: its exploits
LINEAGE_FILE = "lineage.json"  # parent run: every member's exploits
SCHEDULE_FILE = "best_schedule.json"  # parent run: what the best member trained with
LEADERBOARD_FILE = "eval_leaderboard.json"  # parent run: the evaluated members (an MLflow table)
POLICY_MODEL = "policy"  # parent run's logged MLflow model: the best member's greedy policy
