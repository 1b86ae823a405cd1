"""Data parallelism: 4 simulated devices match 1 device; two jax.distributed processes train together."""

import json
import os
import socket
import subprocess
import sys

import pytest

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "parallel_worker.py")


def _result(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, stdout
    return json.loads(lines[-1][len("RESULT "):])


def test_four_devices_match_one_device(fer2013_dir):
    env = {**os.environ, "FER2013_DIR": fer2013_dir, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, WORKER, "equivalence"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = _result(run.stdout)
    assert result["devices"] == 4
    for one, four in zip(result["losses_1"], result["losses_n"]):
        assert four == pytest.approx(one, rel=1e-4, abs=1e-5)
    assert result["max_param_diff"] < 1e-4
    assert result["eval_count"] == result["val_size"]  # every face once, padding masked, summed over devices


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_train_with_jax_distributed(fer2013_dir, tmp_path):
    port = str(_free_port())
    env = {**os.environ, "FER2013_DIR": fer2013_dir, "JAX_PLATFORMS": "cpu",
           "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo"}
    procs = [subprocess.Popen([sys.executable, WORKER, "distributed", port, str(i), str(tmp_path / "run")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    results = [_result(out) for out, _ in outputs]
    assert sorted(r["process"] for r in results) == [0, 1]
    assert all(r["processes"] == 2 and r["devices"] == 2 for r in results)
    assert results[0]["test_accuracy"] == results[1]["test_accuracy"] and results[0]["test_count"] == 40
    assert os.path.exists(tmp_path / "run" / "metrics.json")  # written once, by process 0
