"""HOG features (scikit-image) for the CNN + HOG fusion model, computed once per image and cached.

Augmentation runs on the accelerator, after these features are computed, so each face gets
two vectors: of the face and of its mirror image; the train step picks the one matching its
flip. Shifts, rotations and zooms are not followed (the HOG cells are 8 px wide, so shifts of
a few pixels change them little).
"""

from __future__ import annotations

import hashlib
import logging
import os

import numpy as np

from ferjax import data


def hog_features(images_NxHxW: np.ndarray, orientations: int = 9, pixels_per_cell: int = 8,
                 cells_per_block: int = 2) -> np.ndarray:
    """scikit-image HOG (L2-Hys blocks) of each face, float32 [N, D].

    At 48x48 with the defaults: 6x6 cells, 5x5 blocks of 2x2 cells, 9 bins: D = 900.
    """
    from skimage.feature import hog

    def one(image_HxW):
        return hog(image_HxW, orientations=orientations, pixels_per_cell=(pixels_per_cell,) * 2,
                   cells_per_block=(cells_per_block,) * 2, block_norm="L2-Hys", feature_vector=True)

    return np.stack([one(image) for image in images_NxHxW]).astype(np.float32)


def hog_dim(image_size: int, orientations: int, pixels_per_cell: int, cells_per_block: int) -> int:
    """Length of the HOG vector of an image_size x image_size face."""
    blocks = image_size // pixels_per_cell - cells_per_block + 1
    return blocks * blocks * cells_per_block * cells_per_block * orientations


def cached_hog_pair(images_NxHxW: np.ndarray, orientations: int, pixels_per_cell: int,
                    cells_per_block: int) -> dict[str, np.ndarray]:
    """{'hog': HOG of each face, 'hog_flipped': HOG of its mirror}, cached on disk by content."""
    params = (orientations, pixels_per_cell, cells_per_block)
    key = hashlib.sha256(np.ascontiguousarray(images_NxHxW).tobytes() + repr(params).encode()).hexdigest()[:20]
    file = os.path.join(data.cache_dir(), f"hog-{key}.npz")
    try:
        with np.load(file) as z:
            return {"hog": z["hog"], "hog_flipped": z["hog_flipped"]}
    except (OSError, KeyError, ValueError):
        pass
    pair = {"hog": hog_features(images_NxHxW, *params), "hog_flipped": hog_features(images_NxHxW[:, :, ::-1], *params)}
    try:
        data.save_npz_atomic(file, pair)
    except OSError as e:
        logging.warning("could not write the HOG cache %s: %s", file, e)
    return pair
