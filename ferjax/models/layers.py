"""Layers shared by the model families, written in the forms that XLA compiles fastest."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Padding = tuple[tuple[int, int], tuple[int, int]]

# Below this many input channels, the kernel gradient contracts one im2col matrix; above, one matmul per tap.
_IM2COL_MAX_CHANNELS = 16


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


def _conv(x_BxHxWxC: jax.Array, kernel_KxKxCxO: jax.Array, padding: Padding) -> jax.Array:
    return jax.lax.conv_general_dilated(x_BxHxWxC, kernel_KxKxCxO, (1, 1), padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d(x_BxHxWxC: jax.Array, kernel_KxKxCxO: jax.Array, padding: Padding) -> jax.Array:
    """Stride-1 2D convolution, NHWC x HWIO, whose kernel gradient is computed as matmuls.

    Values and gradients equal `lax.conv_general_dilated`'s. On CPU, XLA lowers the kernel
    gradient of a convolution to a generic Eigen convolution that runs at a fraction of the
    machine's matmul speed; contracting the shifted input windows against the output gradient
    with matmuls makes a VGG train step 1.3-1.4x faster. The forward pass and the input gradient
    (a convolution with the flipped kernel) stay on XLA's convolution, which is fast.
    """
    return _conv(x_BxHxWxC, kernel_KxKxCxO, padding)


def _conv2d_fwd(x, kernel, padding):
    return _conv(x, kernel, padding), (x, kernel)


def _conv2d_bwd(padding, residuals, dy_BxHoxWoxO):
    x, kernel = residuals
    k_h, k_w, channels, _ = kernel.shape
    (top, bottom), (left, right) = padding
    # Input gradient: the output gradient convolved with the flipped, transposed kernel ("full" padding).
    flipped = jnp.flip(kernel, (0, 1)).swapaxes(2, 3)
    dx = _conv(dy_BxHoxWoxO, flipped, ((k_h - 1 - top, k_h - 1 - bottom), (k_w - 1 - left, k_w - 1 - right)))
    # Kernel gradient: tap (i, j) is the input window shifted by (i, j), contracted with dy over B, H, W.
    x_padded = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    _, out_h, out_w, out_c = dy_BxHoxWoxO.shape
    dy = dy_BxHoxWoxO.reshape(-1, out_c)
    windows = [x_padded[:, i:i + out_h, j:j + out_w] for i in range(k_h) for j in range(k_w)]
    if channels < _IM2COL_MAX_CHANNELS:  # thin inputs: one [B*H*W, K*K*C] matrix keeps the matmul efficient
        cols = jnp.concatenate(windows, axis=-1).reshape(-1, k_h * k_w * channels)
        dkernel = (cols.T @ dy).reshape(kernel.shape)
    else:
        dkernel = jnp.stack([w.reshape(-1, channels).T @ dy for w in windows]).reshape(kernel.shape)
    return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


class Conv(nn.Module):
    """A stride-1 convolution with the parameters of `nn.Conv` ('kernel', 'bias'), computed by `conv2d`.

    On CPU it runs `conv2d`, whose gradient is faster there; elsewhere, XLA's own convolution
    (cuDNN on GPU) is the better choice, so it runs that.
    """

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    padding: str = "SAME"  # 'SAME' (odd kernels) or 'VALID'
    use_bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
        k_h, k_w = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (k_h, k_w, x_BxHxWxC.shape[-1], self.features), jnp.float32)
        if self.padding not in ("SAME", "VALID"):
            raise ValueError(f"padding must be 'SAME' or 'VALID', got {self.padding!r}")
        # Hashable (a custom_vjp static argument): ((top, bottom), (left, right)).
        padding = tuple(map(tuple, jax.lax.padtype_to_pads(x_BxHxWxC.shape[1:3], (k_h, k_w), (1, 1), self.padding)))
        x, kernel = x_BxHxWxC.astype(self.dtype), kernel.astype(self.dtype)
        y = conv2d(x, kernel, padding) if jax.default_backend() == "cpu" else _conv(x, kernel, padding)
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
            y = y + bias.astype(self.dtype).reshape(1, 1, 1, -1)
        return y
