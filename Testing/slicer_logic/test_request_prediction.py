"""'Predict now': the logic writes the engine's PREDICT request into the running run's folder."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("slicer")

from SemiSupSegLib.logic import SemiSupSegLogic  # noqa: E402


def test_request_is_a_json_list_and_a_second_click_adds_to_it(mrml, tmp_path):
    logic = SemiSupSegLogic()
    (tmp_path / "runs" / "r1").mkdir(parents=True)
    path = logic.requestPrediction(tmp_path, "r1", ["case2"])
    assert path == tmp_path / "runs" / "r1" / "PREDICT"
    assert json.loads(path.read_text()) == ["case2"]
    logic.requestPrediction(tmp_path, "r1", ["case5", "case2"])  # the worker has not served the first yet
    assert json.loads(path.read_text()) == ["case2", "case5"]
    assert [p.name for p in path.parent.iterdir()] == ["PREDICT"]  # no temporary file left behind


def test_request_refusals_say_what_to_do(mrml, tmp_path):
    logic = SemiSupSegLogic()
    with pytest.raises(ValueError, match="start training first"):
        logic.requestPrediction(tmp_path, "missing", ["case1"])
    (tmp_path / "runs" / "r1").mkdir(parents=True)
    with pytest.raises(ValueError, match="select a case"):
        logic.requestPrediction(tmp_path, "r1", [])
