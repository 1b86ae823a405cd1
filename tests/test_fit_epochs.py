"""The epoch count that fits a time budget (scripts/fit_epochs.py, run as a subprocess: its flags are global),
and where a copied tree's commit comes from."""

import os
import re
import subprocess
import sys
import time

import pytest

from ferjax import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_epochs_fill_the_budget_with_steps_and_per_epoch_overhead():
    # An epoch: 10 steps of 0.1 s and 1 s of evaluation and checkpoints, so 2 s; 101 s holds 50 of them.
    assert loop.epochs_that_fit(101.0, 0.1, 10, 1.0, max_epochs=400) == 50
    assert loop.epochs_that_fit(101.0, 0.1, 10, 1.0, max_epochs=30) == 30
    assert loop.epochs_that_fit(1.0, 0.1, 10, 1.0, max_epochs=400) == 1  # always at least one epoch


def test_fit_measures_a_run_and_takes_off_its_start_up_and_final_evaluation(tmp_path, fer2013_dir):
    until = time.time() + 120
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "fit_epochs.py"), "--model=_tiny_cnn", "--batch_size=16",
         "--limit_train=64", "--limit_eval=32", f"--until={until}", "--seconds=0.5", f"--data_dir={fer2013_dir}",
         f"--barrier={tmp_path / 'barrier'}", "--side_by_side=1"],
        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr
    epochs_line, limit_line = result.stdout.split()
    epochs = int(epochs_line.removeprefix("--epochs="))
    assert 1 <= epochs <= 400 and f"{epochs} epochs fit" in result.stderr
    startup_s = float(re.search(r"([\d.]+) s of start-up", result.stderr).group(1))
    final_s = float(re.search(r"([\d.]+) s of final evaluation", result.stderr).group(1))
    budget_min = float(re.search(r"fit ([\d.]+) min", result.stderr).group(1))
    slack_s = 2  # the printed figures are rounded
    assert startup_s > 0 and budget_min * 60 < until - time.time() - startup_s - final_s + slack_s
    # A run started now must stop training early enough to leave its final evaluation before --until.
    limit_min = float(limit_line.removeprefix("--time_limit_minutes="))
    assert 0 < limit_min * 60 < until - time.time() - final_s + slack_s


@pytest.mark.parametrize("flag", ["--minutes=0", "--minutes=1 --side_by_side=0", "--minutes=1 --until=1"])
def test_fit_rejects_bad_values_in_one_line(flag):
    result = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "fit_epochs.py"), *flag.split()],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and flag.split()[-1].split("=")[0] in result.stderr, result.stderr


def test_a_tree_outside_git_takes_its_commit_from_the_environment(monkeypatch):
    def no_git(*args, **kwargs):
        raise OSError("git: not found")

    monkeypatch.setattr(loop.subprocess, "run", no_git)
    monkeypatch.delenv(loop.COMMIT_ENV, raising=False)
    assert loop.git_commit() == "unknown"
    monkeypatch.setenv(loop.COMMIT_ENV, "3abf9ad")
    assert loop.git_commit() == "3abf9ad"
