"""The PBT record is true: what pbtflow logs to MLflow agrees with Ray's own PBT
log, for inputs the presets were not written for: PPO with continuous actions,
PPO on episodes longer than the first batches, and a function trainable written
the plain Ray way with `mutations:` only. The record check itself is tested to
find differences when there are some."""

from __future__ import annotations

import gc
import io
import math
import os
import pickle
import random
import re
import subprocess
import sys
import weakref

import pytest
from mlflow.tracking import MlflowClient
from ray.tune.utils import flatten_dict

import pbtflow
from pbtflow import names, record_check
from pbtflow.cli import main
from pbtflow.trainables.ppo import CONTINUOUS
from pbtflow.trainables.rllib import EPISODES_THIS_ITER, episodes_averaged, no_episode_finished
from pbtflow.console import MAX_ROWS, Progress
from pbtflow.stopping import PopulationStopper, windowed_mean
from mlflow_checks import assert_record_is_true, runs_by_role


def _run(root, name: str, **settings):
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tune_settings = {k: v for k, v in os.environ.items() if k.startswith("TUNE_")}
    random.seed(12345)  # the caller's generator, which a seeded run must leave alone
    results = pbtflow.tune(pbtflow.Experiment(experiment_name=name, tracking_uri=uri, seed=0,
                                              storage_path=str(root / "results"), **settings))
    # Tune's settings by environment variable are restored after the run.
    assert {k: v for k, v in os.environ.items() if k.startswith("TUNE_")} == tune_settings
    assert random.random() == random.Random(12345).random()
    client = MlflowClient(uri)
    parents, _ = runs_by_role(client, name)
    assert len(parents) == 1
    return results, client, parents[0]


@pytest.fixture(scope="module")
def pendulum(ray_runtime, tmp_path_factory):
    """Continuous actions; synchronous so that the two members exploit. Four
    vectorised envs of 64 steps per iteration end their 200-step episodes
    together, at iteration 4: the iterations before and after end none."""
    return _run(tmp_path_factory.mktemp("pendulum"), "pendulum", env="Pendulum-v1", smoke=True,
                synch=True, num_envs_per_env_runner=4)


@pytest.fixture(scope="module")
def acrobot(ray_runtime, tmp_path_factory):
    """Acrobot's episodes last up to 500 steps; the smoke batch is 256 steps,
    so RLlib's first results carry no episode return."""
    return _run(tmp_path_factory.mktemp("acrobot"), "acrobot", env="Acrobot-v1", smoke=True,
                synch=True, stop_iters=8)


@pytest.fixture(scope="module")
def plain(ray_runtime, tmp_path_factory):
    """A plain Ray function trainable; Ray samples the starting values from
    the mutations (no `initial:`)."""
    return _run(tmp_path_factory.mktemp("plain"), "plain", trainable="plain_trainables:climb",
                metric="height", stop_iters=40, perturbation_interval=4, population=4,
                mutations={"lr": {"uniform": [0.1, 2.0]}, "momentum": [0.0, 0.5, 0.9]})


def test_ppo_with_continuous_actions_records_every_exploit(pendulum):
    results, client, parent = pendulum
    assert results.num_errors == 0
    counts = assert_record_is_true(client, parent.info.run_id, results)
    assert counts["exploits"] >= 1, "synchronous PBT with 2 members must exploit"
    assert parent.data.params["preset"] == "continuous"  # picked from the action space
    assert set(parent.data.params["mutated_hyperparameters"].split(",")) == set(CONTINUOUS["mutations"])
    _, children = runs_by_role(client, "pendulum")
    starts = [{k: float(c.data.params[k]) for k in ("gamma", "lambda")} for c in children]
    assert {"gamma": 0.95, "lambda": 0.1} in starts  # RLlib's tuned Pendulum settings
    for child in children:  # no NaN where an iteration ended no episode
        returns = client.get_metric_history(child.info.run_id, names.RETURN_MEAN)
        assert returns and all(math.isfinite(m.value) for m in returns)
        assert min(m.step for m in returns) == 3, "the first episodes end at iteration 4"


def test_ppo_on_long_episodes_waits_for_the_first_return(acrobot):
    results, client, parent = acrobot
    assert results.num_errors == 0 and parent.info.status == "FINISHED"
    _, children = runs_by_role(client, "acrobot")
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, names.TRAINING_ITERATION)]
        returns = [m.step for m in client.get_metric_history(child.info.run_id, names.RETURN_MEAN)]
        assert steps == list(range(8))
        assert returns and returns[0] > 0, "the first batch cannot end an episode"
    assert all(names.RETURN_MEAN in flatten_dict(r.metrics, delimiter="/") for r in results)
    assert_record_is_true(client, parent.info.run_id, results)


def test_a_plain_ray_trainable_with_mutations_only_gets_its_whole_schedule(plain):
    results, client, parent = plain
    assert results.num_errors == 0
    counts = assert_record_is_true(client, parent.info.run_id, results)
    assert counts["exploits"] >= 1
    _, children = runs_by_role(client, "plain")
    for child in children:  # the starting values Ray sampled from the mutations
        assert 0.1 <= float(child.data.params["lr"]) <= 2.0
        assert float(child.data.params["momentum"]) in (0.0, 0.5, 0.9)
        assert set(child.data.params) == {"lr", "momentum"}


def test_parent_params_describe_the_experiment_as_the_user_named_it(plain, pendulum):
    _, _, parent = plain
    params = parent.data.params
    assert params["trainable"] == "plain_trainables:climb"
    assert not {"env", "preset", "num_env_runners", "cpus_per_env_runner", "gpus_per_trial",
                "trainable_resolved"} & set(params)
    assert not any("function" in value for value in params.values())
    ppo = pendulum[2].data.params
    assert (ppo["env"], ppo["trainable"]) == ("Pendulum-v1", "ppo")


def test_check_command_finds_a_step_logged_twice(plain, capsys):
    """Last in the module: it alters the shared run's record."""
    results, client, parent = plain
    uri = client.tracking_uri
    assert main(["check", "--run-id", parent.info.run_id, "--tracking-uri", uri]) == 0
    assert "complete" in capsys.readouterr().out
    _, children = runs_by_role(client, "plain")
    client.log_metric(children[0].info.run_id, "hp/lr", 123.0, step=1)
    assert main(["check", "--run-id", parent.info.run_id, "--tracking-uri", uri]) == 1
    out = capsys.readouterr().out
    assert "hp/lr is logged at steps" in out, out
    tag = client.get_run(parent.info.run_id).data.tags[names.RECORD_CHECK]
    assert tag.startswith("1 differences") and "hp/lr" in tag


# -- the check itself, on hand-written records ---------------------------------------
MUTATED = ["lr"]
# Trial 1 copies trial 0 after its step 1 (lr 0.5); trial 0 never exploits.
RAY_LOG = [{"target": 1, "donor": 0, "target_iteration": 2, "donor_iteration": 2,
            "config": {"lr": 0.5, "other": 1}}]
EVENT = {"trial_id": "t_00001", "donor_id": "t_00000", "member_step": 1, "wall_time": 1.0,
         "new": {"lr": 0.5}}


def _record():
    return {
        "t_00000": {"params": {"lr": "0.1"}, "events": [], "exploits": 0.0,
                    "hp": {"lr": [(0, 0.1), (1, 0.1), (2, 0.1)]},
                    "iterations": [(0, 1), (1, 2), (2, 3)]},
        "t_00001": {"params": {"lr": "0.2"}, "events": [dict(EVENT)], "exploits": 1.0,
                    "hp": {"lr": [(0, 0.2), (1, 0.2), (2, 0.5)]},
                    "iterations": [(0, 1), (1, 2), (2, 3)]},
    }


POLICIES = {"t_00000": None, "t_00001": [{"target": 1, "donor": 0, "config": {"lr": 0.5}}]}


def test_a_true_record_has_no_differences():
    assert record_check.compare(_record(), MUTATED, RAY_LOG, POLICIES) == []
    assert record_check.summary([]) == "complete"


@pytest.mark.parametrize("tamper, words", [
    (lambda r: r["t_00001"].update(events=[]), "0 exploits in MLflow but 1 in Ray's pbt_global.txt"),
    (lambda r: r["t_00001"].update(events=None), "pbt_events.json is missing"),
    (lambda r: r["t_00001"]["events"][0].update(donor_id="t_00009"), "copied t_00009 in MLflow"),
    (lambda r: r["t_00001"]["events"][0].update(new={"lr": 0.7}), "lr is 0.7 in MLflow but 0.5"),
    (lambda r: r["t_00001"]["hp"]["lr"].pop(), "hp/lr is logged at steps [0, 1]"),
    (lambda r: r["t_00001"]["hp"]["lr"].append((2, 0.5)), "hp/lr is logged at steps [0, 1, 2, 2]"),
    (lambda r: r["t_00001"]["hp"].update(lr=[(0, 0.2), (1, 0.5), (2, 0.5)]),
     "hp/lr is 0.5 at step 1 but Ray's log puts 0.2 in force"),
    (lambda r: r["t_00000"]["hp"].update(lr=[]), "t_00000: hp/lr is logged at steps []"),
    (lambda r: r["t_00000"]["params"].clear(), "the starting value of lr is not a param"),
    (lambda r: r["t_00001"].update(exploits=0.0), "pbt/exploits ends at 0 but 1 exploits"),
    (lambda r: r["t_00000"].update(iterations=[(0, 1), (0, 1), (2, 3)]),
     "training_iteration is logged at steps [0, 0, 2]"),
])
def test_the_check_finds_each_kind_of_difference(tamper, words):
    record = _record()
    tamper(record)
    differences = record_check.compare(record, MUTATED, RAY_LOG, POLICIES)
    assert any(words in d for d in differences), differences


def test_an_exploit_a_resume_undid_is_in_force_only_until_the_resume():
    """Trial 1 exploited after step 0 and trained step 1 with lr 0.5; the
    resume restored Tune's earlier state (lr 0.2) from step 2 on. Ray's log
    kept from before the resume lists the exploit."""
    record = _record()
    record["t_00001"]["events"] = [{**EVENT, "member_step": 0, names.UNDONE_AT: 1}]
    record["t_00001"]["hp"]["lr"] = [(0, 0.2), (1, 0.5), (2, 0.2)]
    assert record_check.compare(record, MUTATED, RAY_LOG, None) == []
    record["t_00001"]["hp"]["lr"] = [(0, 0.2), (1, 0.5), (2, 0.5)]  # the undone value kept on
    assert record_check.compare(record, MUTATED, RAY_LOG, None) == [
        "t_00001: hp/lr is 0.5 at step 2 but Ray's log puts 0.2 in force"]
    record["t_00001"]["hp"]["lr"] = [(0, 0.2), (1, 0.2), (2, 0.2)]  # as if it never happened
    assert record_check.compare(record, MUTATED, RAY_LOG, None) == [
        "t_00001: hp/lr is 0.2 at step 1 but Ray's log puts 0.5 in force"]


def test_the_check_finds_an_exploit_ray_logged_for_an_unknown_trial():
    log = RAY_LOG + [{"target": 7, "donor": 0, "target_iteration": 3, "donor_iteration": 3,
                      "config": {"lr": 0.1}}]
    assert any("has no child run" in d for d in record_check.compare(_record(), MUTATED, log, POLICIES))


def test_policy_files_are_replayed_with_rays_rule():
    # b copies a (a never exploited: b's file keeps its lines), then c copies b.
    events = [{"trial_id": "b", "donor_id": "x", "new": {"lr": 1}},
              {"trial_id": "b", "donor_id": "a", "new": {"lr": 2}},
              {"trial_id": "c", "donor_id": "b", "new": {"lr": 3}}]
    files = record_check.policy_files(events)
    assert [line["donor"] for line in files["b"]] == ["x", "a"]
    assert [line["donor"] for line in files["c"]] == ["x", "a", "b"]
    assert "a" not in files


# -- the stop rule and the console, on a recorded stream of results ------------------
def test_a_return_pending_until_the_first_episode_ends_is_not_an_error():
    stopper = PopulationStopper(names.RETURN_MEAN, "max", 10, None,
                                metric_pending=no_episode_finished)
    assert stopper("t", {"training_iteration": 1, "env_runners": {"num_episodes": 0}}) is False
    assert stopper.error is None
    assert stopper("t", {"training_iteration": 2, "env_runners": {
        "num_episodes": 1, "episode_return_mean": -500.0}}) is False
    # A restored member's first iteration that ends no episode: nothing yet.
    assert stopper("t", {"training_iteration": 3, "env_runners": {
        "num_episodes": 0, "num_episodes_lifetime": 40}}) is False
    assert stopper.error is None


def test_a_metric_never_reported_fails_once_episodes_have_ended():
    stopper = PopulationStopper("no/such/metric", "max", 10, None, metric_pending=no_episode_finished)
    assert stopper("t", {"training_iteration": 1, "env_runners": {"num_episodes": 0}}) is False
    assert stopper("t", {"training_iteration": 2, "env_runners": {"num_episodes": 3}}) is True
    assert stopper.error.startswith("metric: the trainable never reports 'no/such/metric'")


def test_a_time_attr_never_reported_fails_at_the_first_result():
    stopper = PopulationStopper("score", "max", 10, None, time_attr="nonsense")
    assert stopper("t", {"training_iteration": 1, "score": 1.0}) is True
    assert stopper.error.startswith("time_attr: the trainable never reports 'nonsense'")



@pytest.mark.parametrize("ended_on", ["target", "error"])
def test_the_stoppers_verdict_reaches_a_new_process_with_its_pickle(ended_on):
    """What a resume in a new process learns from the stopper Tune saved: the
    target reached (the members ended) or the error, and that an error is the
    saved experiment's, not a new one; a verdict the copy did not have stays
    unset."""
    stopper = PopulationStopper("score", "max", 10, 5.0)
    metric = {"score": 7.0} if ended_on == "target" else {}
    stopper("t1", {"training_iteration": 3, **metric})
    read = ("import pickle, sys\n"
            "s = pickle.load(sys.stdin.buffer)\n"
            "print(repr((s.reached, s.error, s.error_saved)))")
    loaded = subprocess.run([sys.executable, "-c", read], input=pickle.dumps(stopper),
                            capture_output=True, timeout=60, check=True)
    reached, error, error_saved = eval(loaded.stdout.decode())
    if ended_on == "target":
        assert (reached, error, error_saved) == (("t1", 7.0), None, False)
    else:
        assert reached is None and error.startswith("metric: the trainable never reports 'score'")
        assert error_saved


@pytest.mark.parametrize("save_reaching", [True, False])
def test_the_reaching_member_ends_first_when_tune_saves_it_at_its_end(save_reaching):
    """A class or RLlib member that reaches the target stops alone (Tune saves
    its checkpoint at end) and the others once it has ended; a function
    trainable's population stops at once (it saves only when it says so).
    A resume in a new process does not wait for a member that has ended."""
    stopper = PopulationStopper("score", "max", 10, 5.0, save_reaching=save_reaching)
    assert stopper("t0", {"training_iteration": 3, "score": 4.0}) is False
    assert stopper("t1", {"training_iteration": 3, "score": 7.0}) is save_reaching
    assert stopper.reached == ("t1", 7.0)
    assert stopper.stop_all() is not save_reaching
    stopper.settle("t0")  # another member ending (its stop_iters, an error) is not the one
    assert stopper.stop_all() is not save_reaching
    stopper.settle("t1")
    assert stopper.stop_all()
    waiting = PopulationStopper("score", "max", 10, 5.0, save_reaching=True)
    waiting("t1", {"training_iteration": 3, "score": 7.0})
    read = ("import pickle, sys\n"
            "print(pickle.load(sys.stdin.buffer).stop_all())")
    loaded = subprocess.run([sys.executable, "-c", read], input=pickle.dumps(waiting),
                            capture_output=True, timeout=60, check=True)
    assert loaded.stdout.decode().strip() == "True"


def test_a_stoppers_copies_share_what_they_learn_and_it_goes_with_the_last_copy():
    """Tune drives a resumed experiment with its own unpickled copy of the
    stopper while pbtflow holds another: what one learns (the target
    reached, every member's episode window) the other knows. Once every copy
    is gone, so is what they shared: a process that tunes experiment after
    experiment does not keep each one's windows."""
    stopper = PopulationStopper(names.RETURN_MEAN, "max", 1000, 200.0, stop_episodes=10,
                                episodes_key=EPISODES_THIS_ITER)
    copy = pickle.loads(pickle.dumps(stopper))
    copy("t0", {"training_iteration": 1, "env_runners": {"episode_return_mean": 150.0, "num_episodes": 6}})
    stopper("t0", {"training_iteration": 2, "env_runners": {"episode_return_mean": 250.0, "num_episodes": 6}})
    assert copy.reached == stopper.reached == ("t0", 200.0)  # (6 x 150 + 6 x 250) / 12: one window
    shared = weakref.ref(stopper._board())
    del copy
    gc.collect()
    assert shared() is not None and stopper.reached == ("t0", 200.0)
    del stopper
    gc.collect()
    assert shared() is None


def test_the_windowed_stop_return_is_the_mean_of_the_latest_episodes_recomputed_one_by_one():
    """windowed_mean against the episodes themselves: each iteration ends a
    random number of episodes (often none or one, as a small batch on long
    episodes does), and the mean is recomputed from the episode returns of
    the fewest latest iterations that hold at least N of them."""
    rng = random.Random(3)
    episodes: list[tuple[int, float]] = []  # (iteration, return)
    rows: list = []
    for iteration in range(1, 200):
        returns = [rng.uniform(-200, 300) for _ in range(rng.choice([0, 0, 1, 1, 2, 7]))]
        episodes += [(iteration, r) for r in returns]
        mean = sum(returns) / len(returns) if returns else 123.0  # a repeated value: ignored
        got = windowed_mean(rows, iteration, mean, len(returns), 10, keep=5)
        counted, first = 0, iteration + 1
        while counted < 10 and first > 1:
            first -= 1
            counted += sum(1 for i, _ in episodes if i == first)
        window = [r for i, r in episodes if i >= first]
        if len(window) < 10:
            assert got is None, (iteration, got)
        else:
            assert got == pytest.approx(sum(window) / len(window)), iteration
    assert len(rows) < 30  # trimmed (about 130 of the 199 iterations ended episodes)


def test_one_lucky_episode_does_not_stop_the_population_under_stop_episodes():
    """LunarLander's case: a member whose iterations ended one episode each
    and whose last one returned 219.6 has not reached 200 over 10 episodes;
    a member that exploits takes over its donor's episodes up to the donor's
    checkpoint; a member sent back to an older checkpoint (a retry) forgets
    the episodes after it."""
    stopper = PopulationStopper(names.RETURN_MEAN, "max", 1000, 200.0, save_reaching=True,
                                stop_episodes=10, episodes_key=EPISODES_THIS_ITER)

    def result(iteration, mean, episodes):
        return {"training_iteration": iteration,
                "env_runners": {"episode_return_mean": mean, "num_episodes": episodes}}

    for iteration, value in enumerate([-27, -73, -10, 26, -76, 109, 89, 150, 180, 219.6], start=1):
        assert stopper("t0", result(iteration, value, 1)) is False
    assert stopper.reached is None  # their mean is 58.8
    plain = PopulationStopper(names.RETURN_MEAN, "max", 1000, 200.0, save_reaching=True)
    assert plain("t0", result(10, 219.6, 1)) is True  # the latest iteration's one episode
    for iteration in range(1, 6):  # the donor: 5 episodes an iteration, at 250
        assert stopper("t1", result(iteration, 250.0, 5)) is (iteration == 2)
    assert stopper.reached == ("t1", 250.0)
    stopper.reached = None  # (a fresh verdict, for what follows)
    stopper.inherit("t0", "t1", 1)  # t0 continues from t1's checkpoint of iteration 1: 5 episodes
    assert stopper("t0", result(2, 100.0, 5)) is False  # (5 x 250 + 5 x 100) / 10 = 175
    assert stopper("t0", result(3, 250.0, 5)) is False  # (5 x 100 + 5 x 250) / 10 = 175
    assert stopper("t0", result(2, 300.0, 6)) is True  # retried from iteration 1: (5 x 250 + 6 x 300) / 11
    assert stopper.reached == ("t0", pytest.approx((5 * 250 + 6 * 300) / 11))


def test_the_window_counts_only_the_episodes_rllibs_mean_takes():
    """RLlib 2.60's mean return takes at most the latest
    metrics_num_episodes_for_smoothing episodes of an iteration (split over
    the env runners): with SAC's 5, an iteration that ended 12 episodes
    counts as 5 in the window."""
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.algorithms.sac import SACConfig

    assert episodes_averaged(PPOConfig()) == 100
    assert episodes_averaged(PPOConfig().env_runners(num_env_runners=3)) == 3 * 34
    assert episodes_averaged(SACConfig().reporting(metrics_num_episodes_for_smoothing=5)) == 5
    stopper = PopulationStopper(names.RETURN_MEAN, "max", 1000, 200.0, stop_episodes=10,
                                episodes_key=EPISODES_THIS_ITER, episodes_cap=5)
    iteration = {"training_iteration": 1, "env_runners": {"episode_return_mean": 250.0, "num_episodes": 12}}
    stopper("t0", iteration)
    assert stopper.reached is None  # 5 episodes, not 12
    stopper("t0", {"training_iteration": 2, "env_runners": {"episode_return_mean": 150.0, "num_episodes": 12}})
    assert stopper.reached == ("t0", 200.0)  # (5 x 250 + 5 x 150) / 10


class _Trial:
    def __init__(self, trial_id, **config):
        self.trial_id, self.config = trial_id, config


class _Scheduler:
    def __init__(self):
        self.events = []


def _screen(text: str) -> list[str]:
    """What a terminal shows after ``text``: lines, with the two escape
    sequences the table uses (cursor up N lines, clear to the end)."""
    screen: list[str] = []
    for part in re.split(r"(\x1b\[\d*[FJ])", text):
        if part.startswith("\x1b["):
            if part.endswith("F"):
                cursor = len(screen) - int(part[2:-1])
            else:
                del screen[cursor:]
        else:
            screen += part.splitlines()
    return screen


@pytest.mark.parametrize("mode, best", [("max", "member-1"), ("min", "member-0")])
def test_the_population_table_puts_the_best_member_first_for_the_mode(mode, best):
    out = io.StringIO()
    progress = Progress("loss", mode, _Scheduler(), ["lr"], every_s=0.0, stream=out)
    progress.on_trial_result(0, [], _Trial("a_00000", lr=0.1), {"loss": 1.0, "training_iteration": 1})
    progress.on_trial_result(0, [], _Trial("a_00001", lr=0.2), {"loss": 5.0, "training_iteration": 3})
    table = out.getvalue().splitlines()[-3:]
    assert re.split(r"\s+", table[0]) == ["[pbtflow]", "member", "iter", "loss", "lr", "exploits"]
    assert table[1].split()[1] == best
    assert {tuple(line.split()[1:]) for line in table[1:]} == {
        ("member-0", "1", "1", "0.1", "0"), ("member-1", "3", "5", "0.2", "0")}


def test_an_exploit_is_one_line_and_changes_the_members_row():
    out, scheduler = io.StringIO(), _Scheduler()
    progress = Progress("acc", "max", scheduler, ["lr", "api_token"], every_s=0.0, stream=out)
    progress.on_trial_result(0, [], _Trial("a_00000", lr=0.1, api_token="s3cret"), {"acc": 9.0})
    progress.on_trial_result(0, [], _Trial("a_00001", lr=0.5, api_token="s3cret"), {"acc": 1.0})
    scheduler.events.append({"trial_id": "a_00001", "donor_id": "a_00000", "time": 4,
                             "old": {"lr": 0.5, "api_token": "a"}, "new": {"lr": 0.12, "api_token": "b"}})
    progress.on_trial_result(0, [], _Trial("a_00001", lr=0.12, api_token="s3cret"), {"acc": 9.5})
    text = out.getvalue()
    assert "[pbt] member-1 copies member-0 at t=4: lr 0.5 -> 0.12\n" in text
    assert "s3cret" not in text and "api_token" not in text
    last = text.splitlines()[-2:]
    assert last[0].split()[1:] == ["member-1", "-", "9.5", "0.12", "1"]
    assert last[1].split()[1:] == ["member-0", "-", "9", "0.1", "0"]


def test_on_a_terminal_the_table_is_redrawn_in_place_below_the_exploit_lines():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out, scheduler = Terminal(), _Scheduler()
    progress = Progress("acc", "max", scheduler, ["lr"], every_s=0.0, stream=out)
    for step in range(3):
        progress.on_trial_result(0, [], _Trial("a_00000", lr=0.1), {"acc": step, "training_iteration": step})
        progress.on_trial_result(0, [], _Trial("a_00001", lr=0.5), {"acc": -step, "training_iteration": step})
    scheduler.events.append({"trial_id": "a_00001", "donor_id": "a_00000", "time": 2,
                             "old": {"lr": 0.5}, "new": {"lr": 0.12}})
    progress.every_s = 1e9  # from here, only the exploit redraws the table
    progress.on_trial_result(0, [], _Trial("a_00001", lr=0.12), {"acc": 3.0, "training_iteration": 3})
    progress.on_trial_result(0, [], _Trial("a_00000", lr=0.1), {"acc": 2.5, "training_iteration": 3})
    screen = _screen(out.getvalue())
    assert screen[0] == "[pbt] member-1 copies member-0 at t=2: lr 0.5 -> 0.12"
    assert len(screen) == 5 and screen[1].startswith("[pbtflow] 2 members")
    assert screen[3].split()[1:] == ["member-1", "3", "3", "0.12", "1"]
    assert screen[4].split()[1:] == ["member-0", "2", "2", "0.1", "0"]  # not redrawn yet
    progress.on_experiment_end([])
    screen = _screen(out.getvalue())
    assert len(screen) == 5 and screen[4].split()[1:] == ["member-0", "3", "2.5", "0.1", "0"]


def test_a_log_line_between_two_tables_is_not_drawn_over(monkeypatch):
    """A warning printed below the table stays on screen: the next table goes
    below it; rows wider than the terminal are cut, not wrapped."""
    import logging

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    root = logging.getLogger()
    handler = logging.StreamHandler(out)
    root.addHandler(handler)
    monkeypatch.setattr("shutil.get_terminal_size", lambda fallback=None: os.terminal_size((40, 24)))
    progress = Progress("acc", "max", _Scheduler(), ["a_rather_long_hyperparameter_name"], every_s=0.0,
                        stream=out)
    try:
        progress.setup()
        progress.on_trial_result(0, [], _Trial("a_00000", a_rather_long_hyperparameter_name=1.0),
                                 {"acc": 1.0, "training_iteration": 1})
        logging.getLogger("pbtflow.test").warning("pbtflow: a warning that matters")
        progress.on_trial_result(0, [], _Trial("a_00000", a_rather_long_hyperparameter_name=1.0),
                                 {"acc": 2.0, "training_iteration": 2})
        progress.on_trial_result(0, [], _Trial("a_00000", a_rather_long_hyperparameter_name=1.0),
                                 {"acc": 3.0, "training_iteration": 3})
    finally:
        progress.on_experiment_end([])
        root.removeHandler(handler)
    screen = _screen(out.getvalue())
    assert screen.count("pbtflow: a warning that matters") == 1
    below = screen[screen.index("pbtflow: a warning that matters") + 1:]
    assert len(below) == 3 and below[2].split()[1:4] == ["member-0", "3", "3"]
    assert all(len(line) <= 39 for line in screen)
    assert progress._printed not in root.handlers


def test_a_large_population_shows_the_best_members_and_counts_the_rest():
    out = io.StringIO()
    progress = Progress("acc", "max", _Scheduler(), [], every_s=1e9, stream=out)
    for index in range(20):
        progress.on_trial_result(0, [], _Trial(f"a_{index:05d}"), {"acc": float(index)})
    progress.on_experiment_end([])
    lines = out.getvalue().splitlines()
    table = lines[max(i for i, line in enumerate(lines) if line.startswith("[pbtflow] 20 members")):]
    assert len(table) == 2 + MAX_ROWS + 1 and table[-1] == f"[pbtflow] ... and {20 - MAX_ROWS} more"
    assert [line.split()[1] for line in table[2:-1]] == [f"member-{i}" for i in range(19, 19 - MAX_ROWS, -1)]


def test_a_stall_is_reported_with_each_members_state(capsys):
    import time

    from pbtflow.stopping import StallWatch

    class Trial:
        def __init__(self, trial_id, status):
            self.trial_id, self.status = trial_id, status

    watch = StallWatch(None)
    watch.FLOOR_S = 0.05
    watch.on_step_begin(0, [Trial("a_00000", "PAUSED"), Trial("a_00001", "RUNNING")])
    watch.check()
    assert capsys.readouterr().out == ""  # not quiet for long yet
    time.sleep(0.1)
    watch.check()
    out = capsys.readouterr().out
    assert "no member has reported for" in out
    assert "a_00000 PAUSED (by PBT" in out and "a_00001 RUNNING" in out
