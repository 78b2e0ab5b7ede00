"""Lineage and best schedule from exploit events, and the replay scheduler that reads them."""

import json

from pbtflow.lineage import best_schedule, build_lineage, config_at
from pbtflow.pbt import ScheduleReplay

INITIAL = {"a": {"lr": 1.0}, "b": {"lr": 2.0}, "c": {"lr": 3.0}}
# b copies a at its step 4 (a was at 4); later c copies b at 9 (b was at 8).
EVENTS = [
    {"trial_id": "b", "donor_id": "a", "step": 4, "donor_step": 4, "old": {"lr": 2.0}, "new": {"lr": 1.2}},
    {"trial_id": "c", "donor_id": "b", "step": 9, "donor_step": 8, "old": {"lr": 3.0}, "new": {"lr": 1.44}},
]


def test_lineage_lists_each_members_exploits_in_order():
    lineage = build_lineage(EVENTS, INITIAL)
    assert lineage["a"]["exploits"] == []
    assert [e["donor"] for e in lineage["c"]["exploits"]] == ["b"]
    assert lineage["b"]["exploits"][0]["config"] == {"lr": 1.2}


def test_best_schedule_follows_the_donor_chain_backwards():
    schedule = best_schedule(EVENTS, INITIAL, "c")
    assert schedule["root"] == "a" and schedule["initial"] == {"lr": 1.0}
    assert [(c["step"], c["config"]["lr"]) for c in schedule["changes"]] == [(4, 1.2), (8, 1.44)]
    assert [config_at(schedule, i)["lr"] for i in (1, 4, 5, 8, 9, 20)] == [1.0, 1.0, 1.2, 1.2, 1.44, 1.44]


def test_an_exploit_after_the_copy_does_not_rewrite_the_copied_past():
    events = EVENTS + [{"trial_id": "a", "donor_id": "c", "step": 12, "donor_step": 10,
                        "old": {"lr": 1.0}, "new": {"lr": 9.0}}]
    # c copied b before a was overwritten: c's past still starts at a's initial values.
    assert best_schedule(events, INITIAL, "c")["initial"] == {"lr": 1.0}
    assert best_schedule(events, INITIAL, "a")["changes"][-1]["config"] == {"lr": 9.0}


def test_replay_scheduler_reads_the_schedule_with_the_base_config(tmp_path):
    path = tmp_path / "best_schedule.json"
    path.write_text(json.dumps(best_schedule(EVENTS, INITIAL, "c")))
    replay = ScheduleReplay(path, {"lr": 0.0, "env": "CartPole-v1"})
    assert replay.config == {"lr": 1.0, "env": "CartPole-v1"}
    assert [(step, cfg["lr"], cfg["env"]) for step, cfg in replay._policy] == [
        (4, 1.2, "CartPole-v1"), (8, 1.44, "CartPole-v1")]
