"""The final evaluation's fallbacks, on a real Ray runtime: a member whose
evaluation fails or outlasts the timeout is left out with a warning, and the
others still count (the end-to-end evaluation is in test_pipeline)."""

from types import SimpleNamespace

from ray import cloudpickle

import broken_algorithms
from pbtflow.evaluation import Evaluation, evaluate


def _candidate(trial_id: str, value: float):
    return trial_id, value, SimpleNamespace(config={}, checkpoint=SimpleNamespace(path=f"/nowhere/{trial_id}"))


def test_a_member_that_fails_or_hangs_is_left_out_with_a_warning(ray_runtime, caplog):
    cloudpickle.register_pickle_by_value(broken_algorithms)  # workers do not see tests/
    assert evaluate([_candidate("a_00000", 1.0)], broken_algorithms.Unrestorable, 2, 7, 0.5) == []
    assert "the evaluation of a_00000 failed (RuntimeError: cannot read /nowhere/a_00000)" in caplog.text
    assert evaluate([_candidate("b_00001", 1.0)], broken_algorithms.Endless, 2, 7, 0.5, timeout=3) == []
    assert "the evaluation of b_00001 took longer than 3 s; it is left out." in caplog.text


def test_the_spread_is_over_the_episodes_played():
    evaluation = Evaluation("a_00000", [10.0, 20.0, 30.0, 40.0], 5.0)
    assert evaluation.mean == 25.0
    assert abs(evaluation.std - 11.180339887) < 1e-6  # population standard deviation
    assert evaluation.metrics()["eval/num_episodes"] == 4.0
