"""Packing FER2013 into one compact file and back to the challenge CSV loses nothing."""

import os
import subprocess
import sys

import numpy as np
from script_loader import REPO, load_script

from ferjax import data

pack_fer2013 = load_script("pack_fer2013")


def test_pack_then_csv_reads_back_the_same_faces(small_fer2013, tmp_path):
    packed = pack_fer2013.pack(small_fer2013, list(data.SPLITS))
    csv_path = str(tmp_path / "fer2013.csv")
    assert pack_fer2013.write_csv(packed, csv_path) == sum(len(small_fer2013.split(s)) for s in data.SPLITS)
    restored = data.load(csv_path, use_cache=False)
    for name in data.SPLITS:
        np.testing.assert_array_equal(restored.split(name).images, small_fer2013.split(name).images)
        np.testing.assert_array_equal(restored.split(name).labels, small_fer2013.split(name).labels)


def test_unpacking_a_damaged_file_is_a_one_line_error(tmp_path):
    bad = tmp_path / "fer2013.npz.xz"
    bad.write_bytes(b"not xz at all")
    result = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "pack_fer2013.py"), "unpack",
                             f"--input={bad}", f"--output={tmp_path / 'out.csv'}"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and str(bad) in result.stderr
    assert "not a packed FER2013 file" in result.stderr and "Traceback" not in result.stderr
