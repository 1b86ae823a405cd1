"""HOG features: shapes by hand, the mirror pair, and the cache."""

import os

import numpy as np
import pytest
from skimage.feature import hog

from ferjax import data, features


@pytest.mark.parametrize("orientations,cell,block,expected", [(9, 8, 2, 900), (8, 6, 3, 6 * 6 * 9 * 8), (9, 16, 1, 81)])
def test_hog_length_by_hand(orientations, cell, block, expected):
    # 48 px / cell = cells per side; (cells - block + 1)^2 blocks of block^2 cells of `orientations` bins.
    assert features.hog_dim(48, orientations, cell, block) == expected
    faces = np.random.default_rng(0).integers(0, 256, (3, 48, 48)).astype(np.uint8)
    assert features.hog_features(faces, orientations, cell, block).shape == (3, expected)


def test_hog_matches_scikit_image_and_mirrors(tmp_path, monkeypatch):
    monkeypatch.setenv(data.CACHE_DIR_ENV, str(tmp_path))
    faces = np.random.default_rng(1).integers(0, 256, (4, 48, 48)).astype(np.uint8)
    pair = features.cached_hog_pair(faces, 9, 8, 2)
    expected = hog(faces[2], orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2), block_norm="L2-Hys")
    np.testing.assert_allclose(pair["hog"][2], expected, rtol=1e-6)
    mirrored = hog(faces[2][:, ::-1], orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2),
                   block_norm="L2-Hys")
    np.testing.assert_allclose(pair["hog_flipped"][2], mirrored, rtol=1e-6)
    assert len(os.listdir(tmp_path)) == 1
    again = features.cached_hog_pair(faces, 9, 8, 2)  # from the cache
    np.testing.assert_array_equal(again["hog"], pair["hog"])
    features.cached_hog_pair(faces, 8, 8, 2)  # other parameters: another cache entry
    assert len(os.listdir(tmp_path)) == 2
