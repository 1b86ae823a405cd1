"""Shared fixtures: fast-compiling JAX, strict broadcasting, and real FER2013 faces."""

import os

import jax
import numpy as np
import pytest

from ferjax import data

jax.config.update("jax_disable_most_optimizations", True)  # faster compiles; tests are tiny
jax.config.update("jax_numpy_rank_promotion", "raise")  # no silent broadcasting in the maths


@pytest.fixture(scope="session")
def fer2013_dir() -> str:
    """The real FER2013 (FER2013_DIR, else data/fer2013). Missing data fails the run, it never skips."""
    path = os.environ.get(data.DATA_DIR_ENV, data.DEFAULT_DATA_DIR)
    if not os.path.exists(path):
        pytest.fail(f"FER2013 not found at {os.path.abspath(path)}: set {data.DATA_DIR_ENV} (tests use the real data)")
    return path


@pytest.fixture(scope="session")
def fer2013(fer2013_dir) -> data.FER2013:
    return data.load(fer2013_dir)


@pytest.fixture(scope="session")
def small_fer2013(fer2013) -> data.FER2013:
    """A few hundred real faces: 320 train, 96 val, 96 test, class shares kept."""
    return data.FER2013(
        train=data.stratified_subset(fer2013.train, 320),
        val=data.stratified_subset(fer2013.val, 96),
        test=data.stratified_subset(fer2013.test, 96),
        source=fer2013.source,
    )


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
