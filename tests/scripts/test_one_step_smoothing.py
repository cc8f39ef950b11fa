"""scripts/one_step_smoothing.py: sigmas are chosen on training captions and written safely."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "one_step_smoothing.py"


def load_script():
    spec = importlib.util.spec_from_file_location("one_step_smoothing", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_training_ids_skip_the_heldout_split_and_spread_evenly():
    script = load_script()
    heldout = np.zeros(100, bool)
    heldout[::10] = True
    ids = script.training_ids(heldout, 9)
    assert len(ids) == 9 and not heldout[ids].any()
    assert ids == sorted(ids) and ids[0] == 1 and ids[-1] == 99
    assert script.training_ids(heldout, 1000) == list(np.flatnonzero(~heldout))


def test_write_smoothing_keeps_the_rest_of_student_json(tmp_path):
    script = load_script()
    (tmp_path / "student.json").write_text(json.dumps({"timesteps": [999, 299], "teacher": "t"}))
    script.write_smoothing(tmp_path, 0.6)
    assert json.loads((tmp_path / "student.json").read_text()) == {
        "timesteps": [999, 299], "teacher": "t", "one_step_smoothing": 0.6}
    assert [path.name for path in tmp_path.iterdir()] == ["student.json"]
