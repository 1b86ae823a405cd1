"""Layers shared by the model families."""

import jax


def max_pool_2x2(x_BxHxWxC: jax.Array) -> jax.Array:
    """2x2 max pooling, stride 2, odd edges dropped (as 'VALID' pooling).

    Written as a reshape and a max rather than `nn.max_pool`: on CPU, XLA compiles the gradient of
    this form about 3.5x faster than reduce_window's select-and-scatter for wide feature maps (32+
    channels; a train step of `cnn_shallow` gains ~35%), with identical values. For the 8-10 channel
    maps of the Deep-Emotion net it is slower, so that net keeps `nn.max_pool`.
    """
    batch, height, width, channels = x_BxHxWxC.shape
    h2, w2 = height // 2, width // 2
    x = x_BxHxWxC[:, : 2 * h2, : 2 * w2]
    return x.reshape(batch, h2, 2, w2, 2, channels).max(axis=(2, 4))
