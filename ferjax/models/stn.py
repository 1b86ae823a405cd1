"""The attentional convolutional network (Deep-Emotion) and its localisation network.

`ferjax.models.cnn.CNN(attention=True)` puts the same localisation network in front of a deep CNN.

The paper's figure is not self-consistent: its localisation network draws 3x3 convolutions
yet feeds an FC layer of 90 inputs, and it draws the sampler after the conv stack. We follow
the most-used public port for the localisation net (7x7 and 5x5 kernels, 640 features into
FC 32) and, by default, warp the *input* image; ``warp_at='features'`` warps the last conv
feature map instead, as the figure draws it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from ferjax import spatial
from ferjax.models.layers import BatchNormReLU, Conv, max_pool_2x2

WARP_POSITIONS = ("input", "features")
# What the localisation net may do: any affine map, or only turn, zoom uniformly and shift (no shear).
TRANSFORMS = ("affine", "similarity")
# The localisation net's module name in every model with attention: checkpoints and ferjax.visualize find it by it.
LOCALIZATION_NET = "stn_loc"


def _identity_bias(key, shape, dtype=jnp.float32):
    del key
    return jnp.eye(2, 3, dtype=dtype).reshape(shape)


class LocalizationNet(nn.Module):
    """conv 8@7x7 -> pool 2 -> ReLU -> conv 10@5x5 -> pool 2 -> ReLU -> FC 32 -> ReLU -> FC 6 = theta.

    The last layer starts at the identity transform (zero kernel, identity bias), so training
    begins from an unwarped face. normalize=True puts batch norm before each ReLU.
    transform='similarity' replaces theta by its nearest similarity transform; the layer keeps its
    six outputs, so checkpoints of either kind load into the other.
    """

    dtype: Any = jnp.float32
    # Batch norm keeps each unit's input centred, so no ReLU can go silent for every face. Behind a
    # strong trunk this net gets tiny gradients, on which Adam still takes full-size steps: without
    # batch norm, at the CPU recipe's learning rates all 32 FC units died and theta became a constant.
    normalize: bool = False
    transform: str = "affine"  # one of TRANSFORMS

    @nn.compact
    def __call__(self, x_BxHxWx1: jax.Array, *, train: bool = False) -> jax.Array:
        if self.transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {TRANSFORMS}, got {self.transform!r}")

        def activate(y, name):
            if self.normalize:
                return BatchNormReLU(momentum=0.9, dtype=self.dtype, name=name)(y, train=train)
            return nn.relu(y)

        x = Conv(8, (7, 7), padding="VALID", use_bias=not self.normalize, dtype=self.dtype)(x_BxHxWx1)
        x = max_pool_2x2(activate(x, "bn_0"))  # ReLU and max pooling commute
        x = Conv(10, (5, 5), padding="VALID", use_bias=not self.normalize, dtype=self.dtype)(x)
        x = max_pool_2x2(activate(x, "bn_1"))
        x = nn.Dense(32, use_bias=not self.normalize, dtype=self.dtype)(x.reshape(x.shape[0], -1))
        x = activate(x, "bn_2")
        self.sow("attention", "hidden", x)  # read by visualize.attention_statistics (live units)
        theta = nn.Dense(6, kernel_init=nn.initializers.zeros, bias_init=_identity_bias, name="theta")(x)
        theta_Bx2x3 = theta.astype(jnp.float32).reshape(-1, 2, 3)
        return spatial.nearest_similarity(theta_Bx2x3) if self.transform == "similarity" else theta_Bx2x3


class DeepEmotion(nn.Module):
    """The paper's attentional network.

    Feature extractor: conv 10@3x3 -> ReLU -> conv 10@3x3 -> pool 2 -> ReLU -> conv 10@3x3 -> ReLU
    -> conv 10@3x3 -> BN -> pool 2 -> ReLU -> dropout -> FC 50 -> ReLU -> FC 7 (810 features
    enter FC 50 at 48x48). Returns (logits, aux) with aux['theta'] and aux['warped'].
    """

    warp_at: str = "input"  # 'input' (public port) or 'features' (the paper's figure)
    stn_transform: str = "affine"  # the localisation net's TRANSFORMS: 'affine' or 'similarity'
    dropout: float = 0.5  # dropout before FC 50
    num_classes: int = 7
    dtype: Any = jnp.float32
    needs_hog: ClassVar[bool] = False

    @nn.compact
    def __call__(self, x_BxHxWx1: jax.Array, *, train: bool) -> tuple[jax.Array, dict]:
        if self.warp_at not in WARP_POSITIONS:
            raise ValueError(f"warp_at must be one of {WARP_POSITIONS}, got {self.warp_at!r}")
        theta_Bx2x3 = LocalizationNet(self.dtype, transform=self.stn_transform, name=LOCALIZATION_NET)(x_BxHxWx1)
        aux = {"theta": theta_Bx2x3}
        x = x_BxHxWx1
        if self.warp_at == "input":
            x = aux["warped"] = spatial.warp(x, theta_Bx2x3)

        def conv(y, name):
            return Conv(10, (3, 3), padding="VALID", dtype=self.dtype, name=name)(y)

        x = nn.relu(conv(x, "conv1"))
        self.sow("intermediates", "relu1", x)
        x = conv(x, "conv2")
        x = nn.relu(max_pool_2x2(x))
        self.sow("intermediates", "relu2", x)
        x = nn.relu(conv(x, "conv3"))
        self.sow("intermediates", "relu3", x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype, name="bn")(conv(x, "conv4"))
        x = nn.relu(max_pool_2x2(x))
        self.sow("intermediates", "relu4", x)
        if self.warp_at == "features":
            x = aux["warped"] = spatial.warp(x, theta_Bx2x3)
        x = nn.Dropout(self.dropout, deterministic=not train)(x.reshape(x.shape[0], -1))
        x = aux["prelogits"] = nn.relu(nn.Dense(50, dtype=self.dtype, name="fc1")(x))
        logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return logits.astype(jnp.float32), aux
