"""Model registry: `create(name, **config)`; the names are those `--model=` accepts.

Variants are partials of one class per family. Names starting with `_` are tiny
versions for tests. Parameter counts and FLOPs per image: `python scripts/model_table.py`.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from ferjax.models.cnn import CNN
from ferjax.models.stn import DeepEmotion

MODELS = {
    # CNNs of increasing depth, as the paper compares. Parameters and forward MFLOPs per 48x48 face:
    "cnn_shallow": functools.partial(CNN, widths=(32, 64, 128), convs_per_stage=1, hidden=(256,)),  # 1.27 M, 43
    "cnn_medium": functools.partial(CNN, widths=(32, 64, 128, 256), convs_per_stage=2, hidden=(256,)),  # 1.76 M, 212
    "cnn_deep": functools.partial(CNN, widths=(64, 128, 256, 512), convs_per_stage=2, hidden=(512,)),  # 7.05 M, 844
    "hog": functools.partial(CNN, widths=(32, 64, 128, 256), convs_per_stage=2, fuse_hog=True),  # 2.00 M, 213
    "stn": DeepEmotion,  # 66,877, 8.2
    "stn_deep": functools.partial(CNN, widths=(32, 64, 128, 256), convs_per_stage=2, attention=True),  # 1.79 M, 215
    # Tiny variants for tests.
    "_tiny_cnn": functools.partial(CNN, widths=(4, 8), convs_per_stage=1, hidden=(16,)),
    "_tiny_hog": functools.partial(CNN, widths=(4, 8), convs_per_stage=1, hidden=(16,), fuse_hog=True),
    "_tiny_stn_deep": functools.partial(CNN, widths=(4, 8), convs_per_stage=1, hidden=(16,), attention=True),
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


def has_attention(model: nn.Module) -> bool:
    """Whether `model` puts a spatial transformer in front of its trunk (and returns aux['theta'])."""
    return isinstance(model, DeepEmotion) or bool(getattr(model, "attention", False))


def count_params(params) -> int:
    return int(sum(p.size for p in jax.tree.leaves(params)))


def describe(name: str, image_size: int = 48, hog_dim: int = 900, **config) -> dict:
    """Parameter count and forward FLOPs per image (XLA's cost analysis, eval mode) of a registered model."""
    model = create(name, **config)
    x = jnp.zeros((1, image_size, image_size, 1))
    inputs = {"hog": jnp.zeros((1, hog_dim))} if model.needs_hog else {}
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False, **inputs))
    concrete = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), variables)
    compiled = jax.jit(lambda v, x: model.apply(v, x, train=False, **inputs)).lower(concrete, x).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return {"params": count_params(variables["params"]), "flops": int(cost.get("flops", 0))}
