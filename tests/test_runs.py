"""metrics.json is written and read in one place, and a broken or foreign file is named in the error."""

import json

import pytest

from ferjax import runs


def _run_metrics() -> dict:
    return {key: 1 for key in runs.RUN_KEYS} | {"test_accuracy": 0.6}


def test_metrics_round_trip(tmp_path):
    metrics = _run_metrics()
    path = runs.write_metrics(str(tmp_path), metrics)
    assert path == runs.metrics_path(str(tmp_path))
    assert runs.read_metrics(path, required=("test_accuracy",)) == metrics


@pytest.mark.parametrize("content, reason", [
    ("{", "not a readable metrics.json"),
    (b"\xff\xfe", "not a readable metrics.json"),
    ("[1, 2]", "a JSON list"),
    (json.dumps({"accuracy": 0.6}), "no model, params"),  # an evaluate output
    (json.dumps({key: 1 for key in runs.RUN_KEYS}), "no test_accuracy"),  # a k-fold run: val only
])
def test_unreadable_or_foreign_file_is_named(tmp_path, content, reason):
    path = tmp_path / "metrics.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(runs.MetricsError, match=reason) as error:
        runs.read_metrics(str(path), required=("test_accuracy",))
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(runs.MetricsError, match="missing.json: not a readable metrics.json"):
        runs.read_metrics(str(tmp_path / "missing.json"))
