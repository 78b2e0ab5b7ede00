"""What pbtflow keeps beside Tune's own state so that an interrupted
experiment can be resumed: its settings, its MLflow parent run and its folder,
in a versioned JSON file a person can read. A setting added to pbtflow later
takes its default when an older experiment resumes; one pbtflow no longer has
is dropped."""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any

from ray import cloudpickle

from pbtflow.experiment import Experiment, SettingError, field_names

STATE_FILE = "pbtflow_state.json"
LEGACY_STATE_FILE = "pbtflow_state.pkl"  # what pbtflow kept before (read, never written)
VERSION = 2  # 2: non-finite floats as {"float": ...}
_PICKLED = "pickled"  # a value JSON cannot hold (a Python object in a search space), base64
_FLOAT = "float"  # inf, -inf or nan, which strict JSON cannot hold
_MARKERS = {"tuple", _FLOAT, _PICKLED}


def save(experiment: Experiment, parent_run_id: str, path: Path) -> None:
    """Write the resume state of ``experiment`` into its folder ``path``."""
    state = {"version": VERSION, "parent_run_id": parent_run_id, "path": str(path),
             "settings": {key: _plain(value) for key, value in experiment.to_dict().items()}}
    (path / STATE_FILE).write_text(json.dumps(state, indent=2, allow_nan=False) + "\n")


def load(path: str) -> dict[str, Any]:
    """``{"experiment", "parent_run_id", "path"}`` of the interrupted
    experiment in folder ``path`` (also one interrupted by a pbtflow that
    kept this state pickled, in ``LEGACY_STATE_FILE``)."""
    folder = Path(path).expanduser()
    state_file = folder / STATE_FILE
    if not state_file.is_file() and (folder / LEGACY_STATE_FILE).is_file():
        return _load_legacy(folder / LEGACY_STATE_FILE)
    if not state_file.is_file():
        raise SettingError(f"resume: {path!r} is not an interrupted pbtflow experiment (no "
                           f"{STATE_FILE}); pass the folder printed when it stopped.")
    try:
        state = json.loads(state_file.read_text())
        version = int(state["version"])
        settings, parent_run_id, where = state["settings"], state["parent_run_id"], state["path"]
    except (ValueError, KeyError, TypeError) as exc:
        what = f"no {exc.args[0]!r}" if isinstance(exc, KeyError) else str(exc)
        raise SettingError(f"resume: {str(state_file)!r} is not a pbtflow resume state ({what}); "
                           "pass the folder printed when the experiment stopped.") from None
    if version > VERSION:
        raise SettingError(f"resume: {str(state_file)!r} was written by a newer pbtflow (state "
                           f"version {version}, this one reads {VERSION}); resume with that pbtflow.")
    try:
        values = {k: _value(v, version) for k, v in _known(settings).items()}
    except Exception as exc:  # a pickled value whose class is gone
        raise SettingError(f"resume: a setting in {str(state_file)!r} cannot be read back "
                           f"({type(exc).__name__}: {exc}); resume with the pbtflow and packages "
                           "that started the experiment.") from None
    return {"experiment": Experiment(**values), "parent_run_id": parent_run_id, "path": where}


def _load_legacy(state_file: Path) -> dict[str, Any]:
    state = cloudpickle.loads(state_file.read_bytes())
    if "settings" in state:  # the settings as plain values (else the dataclass itself)
        state["experiment"] = Experiment(**_known(state.pop("settings")))
    return state


def _known(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings this pbtflow has (a setting since removed is dropped)."""
    known = set(field_names())
    return {k: v for k, v in settings.items() if k in known}


def _plain(value: Any) -> Any:
    """``value`` as JSON, exactly: a tuple stays a tuple only through
    ``_value``, and what JSON cannot hold is pickled."""
    if isinstance(value, tuple):
        return {"tuple": [_plain(v) for v in value]}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value) and \
            not (_MARKERS & value.keys() and len(value) == 1):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return {_FLOAT: repr(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return {_PICKLED: base64.b64encode(cloudpickle.dumps(value)).decode("ascii")}


def _value(plain: Any, version: int) -> Any:
    if isinstance(plain, dict):
        if set(plain) == {"tuple"}:
            return tuple(_value(v, version) for v in plain["tuple"])
        if set(plain) == {_FLOAT} and version >= 2:
            return float(plain[_FLOAT])
        if set(plain) == {_PICKLED}:
            return cloudpickle.loads(base64.b64decode(plain[_PICKLED]))
        return {k: _value(v, version) for k, v in plain.items()}
    if isinstance(plain, list):
        return [_value(v, version) for v in plain]
    return plain
