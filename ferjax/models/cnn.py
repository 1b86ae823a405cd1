"""VGG-style CNNs of configurable depth and width, alone, with HOG fusion or behind a spatial transformer.

Every conv block is conv 3x3 -> batch norm -> ReLU; a stage is `convs_per_stage` blocks
followed by 2x2 max pooling. Activations are sown into the 'intermediates' collection
under their layer names, so `ferjax.visualize` reads them without a second forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ferjax import spatial
from ferjax.models.layers import BatchNormReLU, Conv, max_pool_2x2, pad_to_even
from ferjax.models.stn import LOCALIZATION_NET, LocalizationNet


class ConvStack(nn.Module):
    """Stages of 3x3 conv + BN + ReLU blocks, each stage ending in 2x2 max pooling."""

    widths: Sequence[int] = (32, 64, 128, 256)  # channels per stage
    convs_per_stage: int = 2  # conv blocks per stage
    ceil_pool: bool = False  # pooling keeps an odd map's last row and column instead of dropping them
    dtype: Any = jnp.float32  # computation dtype

    @nn.compact
    def __call__(self, x_BxHxWxC: jax.Array, *, train: bool) -> jax.Array:
        x = x_BxHxWxC
        for stage, width in enumerate(self.widths, start=1):
            for block in range(1, self.convs_per_stage + 1):
                name = f"conv{stage}_{block}"
                x = Conv(width, (3, 3), use_bias=False, dtype=self.dtype, name=name)(x)
                x = BatchNormReLU(momentum=0.9, dtype=self.dtype, name=f"bn{stage}_{block}")(x, train=train)
                self.sow("intermediates", f"relu{stage}_{block}", x)
            x = max_pool_2x2(pad_to_even(x) if self.ceil_pool else x)
        return x


class Head(nn.Module):
    """Fully-connected layers: (dropout -> dense -> BN -> ReLU) per hidden width, dropout, logits."""

    hidden: Sequence[int] = (256,)  # widths of the hidden dense layers
    dropout: float = 0.5  # dropout rate before each dense layer
    num_classes: int = 7
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BxD: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
        for i, width in enumerate(self.hidden, start=1):
            x_BxD = nn.Dropout(self.dropout, deterministic=not train)(x_BxD)
            x_BxD = nn.Dense(width, use_bias=False, dtype=self.dtype, name=f"fc{i}")(x_BxD)
            x_BxD = BatchNormReLU(momentum=0.9, dtype=self.dtype, name=f"fc{i}_bn")(x_BxD, train=train)
        prelogits = x_BxD
        x_BxD = nn.Dropout(self.dropout, deterministic=not train)(x_BxD)
        logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x_BxD)
        return logits.astype(jnp.float32), prelogits


class CNN(nn.Module):
    """A VGG-style CNN: `ConvStack` then `Head`, optionally with attention in front or HOG fused in.

    attention=True puts the Deep-Emotion spatial transformer in front (`stn_deep`): its localisation
    net predicts an affine (or similarity) theta from the face, and the trunk sees the warped face. fuse_hog=True
    (`hog`) concatenates the face's HOG vector, computed on the host by `ferjax.features` and passed
    as `hog`, batch-normalised, with the flattened conv features before the dense layers.
    Returns (logits, aux): aux['prelogits'], and aux['theta'], aux['warped'] with attention.
    """

    widths: Sequence[int] = (32, 64, 128, 256)  # channels per stage; the depth is len(widths) * convs_per_stage
    convs_per_stage: int = 2  # conv blocks per stage
    ceil_pool: bool = False  # pooling keeps an odd map's last row and column (a 40x40 crop's 5x5 map: 3x3, not 2x2)
    hidden: Sequence[int] = (256,)  # hidden dense widths
    dropout: float = 0.5  # dropout rate in the head
    attention: bool = False  # spatial transformer in front of the trunk
    stn_transform: str = "affine"  # with attention: the localisation net's 'affine' or 'similarity' transform
    fuse_hog: bool = False  # HOG vector joins the conv features
    num_classes: int = 7
    dtype: Any = jnp.float32

    @property
    def needs_hog(self) -> bool:
        return self.fuse_hog

    @nn.compact
    def __call__(self, x_BxHxWx1: jax.Array, *, train: bool, hog: jax.Array | None = None) -> tuple[jax.Array, dict]:
        aux = {}
        if self.attention:
            aux["theta"] = LocalizationNet(self.dtype, normalize=True, transform=self.stn_transform,
                                           name=LOCALIZATION_NET)(x_BxHxWx1, train=train)
            x_BxHxWx1 = aux["warped"] = spatial.warp(x_BxHxWx1, aux["theta"])
        convs = ConvStack(self.widths, self.convs_per_stage, self.ceil_pool, self.dtype, name="convs")
        features = convs(x_BxHxWx1, train=train)
        features = features.reshape(features.shape[0], -1)
        if self.fuse_hog:
            if hog is None:
                raise ValueError("this model fuses HOG features: pass hog=[B, D]")
            # Batch norm brings the HOG block to the conv features' scale before fusing.
            hog_BxD = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype, name="hog_bn")(hog)
            features = jnp.concatenate([features, hog_BxD.astype(features.dtype)], axis=-1)
        logits, aux["prelogits"] = Head(self.hidden, self.dropout, self.num_classes, self.dtype, name="classifier")(
            features, train=train)
        return logits, aux
