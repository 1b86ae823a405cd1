"""Model registry: `create(name, **config)`; the names are those `--model=` accepts.

Variants are partials of one class per family. Names starting with `_` are tiny
versions for tests. Parameter counts and FLOPs per image: `python scripts/model_table.py`.
"""

from __future__ import annotations

import functools

import flax.linen as nn

from ferjax.models.cnn import CNN, HOGFusion
from ferjax.models.stn import DeepEmotion, STNDeep

MODELS = {
    # CNNs of increasing depth, as the paper compares (3, 8 and 8 wide conv layers).
    "cnn_shallow": functools.partial(CNN, widths=(32, 64, 128), convs_per_stage=1, hidden=(256,)),
    "cnn_medium": functools.partial(CNN, widths=(32, 64, 128, 256), convs_per_stage=2, hidden=(256,)),
    "cnn_deep": functools.partial(CNN, widths=(64, 128, 256, 512), convs_per_stage=2, hidden=(512,)),
    "hog": functools.partial(HOGFusion, widths=(32, 64, 128, 256), convs_per_stage=2, hidden=(256,)),
    "stn": DeepEmotion,
    "stn_deep": functools.partial(STNDeep, widths=(32, 64, 128, 256), convs_per_stage=2, hidden=(256,)),
    # Tiny variants for tests.
    "_tiny_cnn": functools.partial(CNN, widths=(4, 8), convs_per_stage=1, hidden=(16,)),
    "_tiny_hog": functools.partial(HOGFusion, widths=(4, 8), convs_per_stage=1, hidden=(16,)),
    "_tiny_stn_deep": functools.partial(STNDeep, widths=(4, 8), convs_per_stage=1, hidden=(16,)),
}


def names(include_tiny: bool = False) -> list[str]:
    return [n for n in MODELS if include_tiny or not n.startswith("_")]


def create(name: str, **config) -> nn.Module:
    """Builds the registered model `name`, with `config` overriding its fields.

    Raises:
      ValueError: an unknown name or field.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(names())}")
    try:
        return MODELS[name](**config)
    except TypeError as e:
        raise ValueError(f"bad config for model {name!r}: {e}") from None
