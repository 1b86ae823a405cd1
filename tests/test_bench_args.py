"""The benchmarks reject bad flags with one line naming the flag, before any work."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("script, args, message", [
    ("bench_train.py", ["--models=stn,vgg99"], "--models: unknown model(s) vgg99"),
    ("bench_train.py", ["--steps=0"], "--steps=0: must be at least 1"),
    ("bench_predict.py", ["--repeats=0"], "--repeats=0: must be at least 1"),
    ("bench_predict.py", ["--checkpoint=/nonexistent/run"], "--checkpoint: /nonexistent/run"),
    ("bench_predict.py", ["--tta=tencorp"], "argument --tta: invalid choice: 'tencorp'"),
])
def test_bad_flag_is_one_line_error(script, args, message):
    result = subprocess.run([sys.executable, os.path.join(REPO, "scripts", script), *args], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    assert message in result.stderr.splitlines()[-1] and "Traceback" not in result.stderr
