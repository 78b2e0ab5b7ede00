"""The tracking callback driven in-process by a recorded stream of Tune
results (real Ray trial objects, a real SQLite MLflow store read back with a
fresh client), in well under a second: what the end-to-end runs show only when
Tune happens to restore or exploit at the right moment."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient
from ray.tune.experiment import Trial

from pbtflow import names
from pbtflow.tracking import TrialTracker


class Changes:
    """What pbtflow's recording schedulers hand the tracker: every config
    change, in order (an exploit names its donor)."""

    def __init__(self) -> None:
        self.changes: list[dict] = []


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("stream")
    parent = client.create_run(experiment_id).info.run_id
    return uri, client, experiment_id, parent


def _tracker(store, scheduler, mutated=("lr",)) -> TrialTracker:
    _, client, experiment_id, parent = store
    tracker = TrialTracker(client, experiment_id, parent, list(mutated), ["batch"], ("score",),
                           scheduler)
    tracker.setup()
    return tracker


def _result(it: int, score: float) -> dict:
    return {names.TRAINING_ITERATION: it, "score": score, "config": {}}


def _history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in sorted(MlflowClient(uri).get_metric_history(run_id, key),
                                              key=lambda m: m.step)]


def test_a_restored_member_repeating_logged_iterations_keeps_one_history(store):
    """A member restored from its checkpoint at iteration 3 repeats 4 and 5
    (with other values: it trains again); MLflow keeps the first 4 and 5 and
    continues with 6, each step once."""
    uri = store[0]
    tracker = _tracker(store, Changes())
    trial = Trial("__fake", stub=True, config={"lr": 0.1, "batch": 32}, trial_id="t_00000")
    tracker.on_trial_start(0, [trial], trial)
    for it in range(1, 6):
        tracker.on_trial_result(0, [trial], trial, _result(it, 10.0 * it))
    tracker.on_trial_recover(0, [trial], trial)
    for it in (4, 5, 6, 7):
        tracker.on_trial_result(0, [trial], trial, _result(it, 10.0 * it + 1))
    tracker.on_trial_complete(0, [trial], trial)
    tracker.close()

    run_id = tracker.run_ids[trial.trial_id]
    assert _history(uri, run_id, "score") == [(0, 10.0), (1, 20.0), (2, 30.0), (3, 40.0), (4, 50.0),
                                              (5, 61.0), (6, 71.0)]
    assert [step for step, _ in _history(uri, run_id, names.TRAINING_ITERATION)] == list(range(7))
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"lr": "0.1", "batch": "32"}
    assert run.data.tags[names.PARENT_RUN_ID] == store[3]


def test_an_exploit_changes_hp_from_the_next_result_and_is_counted(store):
    """PBT decides an exploit on a member's third result: that result was
    trained with the old value, the next ones with the donor's perturbed one;
    the exploit count and the event carry the member's step. The donor's own
    record does not change."""
    uri = store[0]
    scheduler = Changes()
    tracker = _tracker(store, scheduler)
    member = Trial("__fake", stub=True, config={"lr": 0.1, "batch": 32}, trial_id="t_00000")
    donor = Trial("__fake", stub=True, config={"lr": 0.3, "batch": 32}, trial_id="t_00001")
    for trial in (member, donor):
        tracker.on_trial_start(0, [member, donor], trial)
    for it in range(1, 7):
        for trial in (member, donor):
            tracker.on_trial_result(0, [member, donor], trial, _result(it, float(it)))
            if trial is member and it == 3:  # PBT exploits on this result
                scheduler.changes.append({"trial_id": member.trial_id, "donor_id": donor.trial_id,
                                          "old": {"lr": 0.1}, "new": {"lr": 0.36, "batch": 32},
                                          "time": 3})
    tracker.close()

    hp = names.HP_PREFIX + "lr"
    assert _history(uri, tracker.run_ids[member.trial_id], hp) == [
        (0, 0.1), (1, 0.1), (2, 0.1), (3, 0.36), (4, 0.36), (5, 0.36)]
    assert _history(uri, tracker.run_ids[donor.trial_id], hp) == [(s, 0.3) for s in range(6)]
    assert _history(uri, tracker.run_ids[member.trial_id], names.EXPLOITS) == [
        (0, 0.0), (1, 0.0), (2, 0.0), (3, 1.0), (4, 1.0), (5, 1.0)]
    (event,) = tracker.events_of(member.trial_id)
    assert event["donor_id"] == donor.trial_id and event["member_step"] == 2
    assert tracker.last_config(member.trial_id) == {"lr": 0.36, "batch": 32}


def test_the_tracker_resumed_from_its_pickle_continues_the_same_runs(store):
    """Tune pickles the callback with its experiment state; the copy it
    resumes with writes into the same child runs, at the next steps."""
    from ray import cloudpickle

    uri = store[0]
    tracker = _tracker(store, Changes())
    trial = Trial("__fake", stub=True, config={"lr": 0.1, "batch": 32}, trial_id="t_00000")
    tracker.on_trial_start(0, [trial], trial)
    for it in (1, 2):
        tracker.on_trial_result(0, [trial], trial, _result(it, float(it)))
    tracker.close()
    resumed = cloudpickle.loads(cloudpickle.dumps(tracker))
    resumed.setup()
    resumed.on_trial_recover(0, [trial], trial)
    for it in (2, 3):
        resumed.on_trial_result(0, [trial], trial, _result(it, float(it) + 0.5))
    resumed.close()
    assert resumed.run_ids == tracker.run_ids
    assert _history(uri, tracker.run_ids[trial.trial_id], "score") == [(0, 1.0), (1, 2.0), (2, 3.5)]
