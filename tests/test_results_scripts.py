"""The results scripts read metrics.json files: the tables, the seed summary and the time-to-accuracy plot."""

import json
import statistics

from script_loader import load_script

from ferjax import runs

results_table = load_script("results_table")
time_to_accuracy = load_script("time_to_accuracy")


def _metrics(seed: int, test: float, crop: int = 40) -> dict:
    return {"model": "cnn_shallow", "params": 1000, "best_epoch": 3, "epochs": 4, "device": "CPU", "wall_time_s": 90.0,
            "val_accuracy": 0.5 + seed / 100, "test_accuracy": test, "test_accuracy_flip_tta": test + 0.01,
            "command": f"python -m experiments.train --seed={seed}", "commit": f"c{seed}",
            "config": {"model": "cnn_shallow", "crop": crop, "seed": seed},
            "history": [{"epoch": e, "wall_time": 30.0 * e, "val_accuracy": 0.4 + e / 100, "test_accuracy": test}
                        for e in (1, 2, 3)]}


def test_seed_summary_groups_runs_that_differ_only_in_seed():
    runs = [_metrics(0, 0.60), _metrics(1, 0.64), _metrics(2, 0.62), _metrics(0, 0.70, crop=0)]
    groups = results_table.seed_groups(runs)
    assert [[m["config"]["seed"] for m in g] for g in groups] == [[0, 1, 2]]  # the crop=0 run stands alone

    line = results_table.seeds_table(runs)[-1]
    tests = [0.60, 0.64, 0.62]
    expected_test = f"{100 * statistics.mean(tests):.2f} ± {100 * statistics.stdev(tests):.2f}"
    assert f"| {expected_test} |" in line
    assert "| 0, 1, 2 |" in line and "c0, c1, c2" in line
    assert line.count("| - |") == 1  # no ten-crop accuracy in these runs


def test_seed_summary_reads_a_field_a_run_predates_as_its_default():
    earlier, later, changed = _metrics(0, 0.60), _metrics(1, 0.64), _metrics(2, 0.62)
    later["config"]["ema"] = 0.0  # written after the field existed, with its default
    changed["config"]["ema"] = 0.999
    groups = results_table.seed_groups([earlier, later, changed])
    assert [[m["config"]["seed"] for m in g] for g in groups] == [[0, 1]]


def test_runs_table_has_one_row_per_metrics_file(tmp_path, capsys):
    paths = []
    for seed in (0, 1):
        run_dir = tmp_path / f"run{seed}"
        run_dir.mkdir()
        paths.append(runs.write_metrics(str(run_dir), _metrics(seed, 0.6)))
    assert results_table.main(paths) == 0
    rows = capsys.readouterr().out.strip().splitlines()[2:]
    assert len(rows) == 2 and "`python -m experiments.train --seed=1`" in rows[1]


def test_a_run_stopped_by_its_time_limit_says_so_in_its_row():
    stopped = {**_metrics(0, 0.6), "stopped_after_epoch": 3}
    assert "| 3/4 (stopped after 3) |" in results_table.row(stopped)
    assert "| 3/4 |" in results_table.row(_metrics(0, 0.6))


def test_unreadable_or_foreign_metrics_file_is_one_line_error(tmp_path, capsys):
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    evaluation = tmp_path / "eval.json"
    evaluation.write_text(json.dumps({"accuracy": 0.6}))  # an evaluate output, not a training run's
    for path, reason in ((broken, "not a readable metrics.json"), (evaluation, "no model"),
                         (tmp_path / "missing.json", "not a readable metrics.json")):
        assert results_table.main([str(path)]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(path) in err and reason in err


def test_time_to_accuracy_plots_runs_and_rejects_a_foreign_file(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    path = runs.write_metrics(str(run_dir), _metrics(0, 0.6))
    output = tmp_path / "curves.png"
    assert time_to_accuracy.main([path, f"--output={output}"]) == 0
    assert output.stat().st_size > 0

    evaluation = tmp_path / "eval.json"
    evaluation.write_text(json.dumps({"accuracy": 0.6}))
    assert time_to_accuracy.main([path, str(evaluation), f"--output={output}"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(evaluation) in err and "no model" in err


profile_table = load_script("profile_table")


def _profile(folder, accuracy, answers=None, settings=(-10.0, 0.0, 10.0), kind="tilt"):
    settings_key, answer_key = {"tilt": ("degrees", "theta_degrees"), "zoom": ("zooms", "theta_zoom")}[kind]
    profile = {"split": "val", "faces": 10, settings_key: list(settings), "accuracy": accuracy, "loss": [1.0] * 3}
    if answers:
        profile[answer_key] = {"mean": answers, "std": [0.0] * 3}
    folder.mkdir()
    path = folder / f"{kind}_profile.json"
    path.write_text(json.dumps(profile))
    return str(path)


def test_profile_table_puts_each_runs_accuracy_and_attention_answer_under_its_angle(tmp_path, capsys):
    cnn = _profile(tmp_path / "cnn_run", [0.5, 0.7, 0.55])
    stn = _profile(tmp_path / "stn_run", [0.6, 0.68, 0.61], answers=[4.0, 0.0, -4.25])
    assert profile_table.main([cnn, stn]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "| run (val accuracy %, theta's mean answer) | -10° | +0° | +10° |"
    assert lines[2] == "| cnn_run | 50.00 | 70.00 | 55.00 |"
    assert lines[3] == "| stn_run | 60.00 (+4.0°) | 68.00 (+0.0°) | 61.00 (-4.2°) |"


def test_profile_table_puts_the_magnification_theta_answers_under_each_zoom(tmp_path, capsys):
    stn = _profile(tmp_path / "stn_run", [0.6, 0.68, 0.61], answers=[1.1, 1.0, 0.9125], settings=(0.8, 1.0, 1.25),
                   kind="zoom")
    assert profile_table.main([stn]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "| run (val accuracy %, theta's mean answer) | ×0.8 | ×1 | ×1.25 |"
    assert lines[2] == "| stn_run | 60.00 (×1.100) | 68.00 (×1.000) | 61.00 (×0.912) |"


def test_profile_table_rejects_foreign_files_and_mixed_profiles_in_one_line(tmp_path, capsys):
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    metrics = runs.write_metrics(str(tmp_path), _metrics(0, 0.6))
    one = _profile(tmp_path / "a", [0.5, 0.7, 0.55])
    other = _profile(tmp_path / "b", [0.5, 0.7, 0.55], settings=(-20.0, 0.0, 20.0))
    zoom = _profile(tmp_path / "c", [0.5, 0.7, 0.55], settings=(0.9, 1.0, 1.1), kind="zoom")
    for paths, reason in (([str(broken)], "not a readable profile"), ([metrics], "not a tilt_profile.json or zoom"),
                          ([one, other], "warp faces differently"), ([one, zoom], "of different kinds")):
        assert profile_table.main(paths) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and reason in err
