"""Layers shared by the model families, written in the forms that XLA compiles fastest."""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Padding = tuple[tuple[int, int], tuple[int, int]]

# The kernel gradient contracts the im2col matrix of this many images at a time, so that each
# chunk's matrix stays in cache instead of streaming the whole batch's through memory.
_KERNEL_GRAD_CHUNK = 8
# Below this many im2col columns (kernel taps x input channels), one matmul over the batch is faster.
_CHUNKED_MIN_COLUMNS = 16


def _window_corners(x_BxHxWxC: jax.Array) -> list[jax.Array]:
    """The four corners of every 2x2 window (odd edges dropped), each B x H/2 x W/2 x C."""
    h2, w2 = x_BxHxWxC.shape[1] // 2, x_BxHxWxC.shape[2] // 2
    x = x_BxHxWxC[:, : 2 * h2, : 2 * w2]
    return [x[:, i::2, j::2] for i in (0, 1) for j in (0, 1)]


@jax.custom_vjp
def max_pool_2x2(x_BxHxWxC: jax.Array) -> jax.Array:
    """2x2 max pooling, stride 2, odd edges dropped (as 'VALID' pooling).

    Values equal `nn.max_pool`'s, and so do gradients where a window has one maximum; tied maxima
    share the gradient equally, as the autodiff of a max does. On CPU, XLA lowers reduce_window's
    gradient to index-tracking reductions and a scatter, and the autodiff of a reshaped max to
    reductions over strided axes; the maximum of the four window corners and a comparison mask for
    the gradient are faster than both (a `cnn_shallow` train step by 8-20%) and keep less memory.
    """
    a, b, c, d = _window_corners(x_BxHxWxC)
    return jnp.maximum(jnp.maximum(a, b), jnp.maximum(c, d))


def _max_pool_fwd(x_BxHxWxC):
    y = max_pool_2x2(x_BxHxWxC)
    return y, (x_BxHxWxC, y)


def _max_pool_bwd(residuals, dy_BxhxwxC):
    x, y = residuals
    batch, height, width, channels = x.shape
    h2, w2 = height // 2, width // 2
    is_max = [corner == y for corner in _window_corners(x)]
    share = dy_BxhxwxC / sum(m.astype(dy_BxhxwxC.dtype) for m in is_max)
    corners_2x2xBxhxwxC = jnp.stack([jnp.where(m, share, 0) for m in is_max]).reshape(2, 2, batch, h2, w2, channels)
    dx = corners_2x2xBxhxwxC.transpose(2, 3, 0, 4, 1, 5).reshape(batch, 2 * h2, 2 * w2, channels)
    return (jnp.pad(dx, ((0, 0), (0, height - 2 * h2), (0, width - 2 * w2), (0, 0))),)


max_pool_2x2.defvjp(_max_pool_fwd, _max_pool_bwd)


def _conv(x_BxHxWxC: jax.Array, kernel_KxKxCxO: jax.Array, padding: Padding) -> jax.Array:
    return jax.lax.conv_general_dilated(x_BxHxWxC, kernel_KxKxCxO, (1, 1), padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _im2col(x_BxHxWxC: jax.Array, k_h: int, k_w: int, out_h: int, out_w: int) -> jax.Array:
    """[B*out_h*out_w, k_h*k_w*C]: every output position's input window, taps major, channels minor."""
    windows = [x_BxHxWxC[:, i:i + out_h, j:j + out_w] for i in range(k_h) for j in range(k_w)]
    return jnp.concatenate(windows, axis=-1).reshape(-1, k_h * k_w * x_BxHxWxC.shape[-1])


def _kernel_grad(x_padded: jax.Array, dy_BxHoxWoxO: jax.Array, kernel_shape: tuple[int, ...]) -> jax.Array:
    """dL/dkernel: the im2col matrix of the padded input contracted with the output gradient."""
    k_h, k_w, channels, out_c = kernel_shape
    batch, out_h, out_w, _ = dy_BxHoxWoxO.shape
    columns = k_h * k_w * channels
    if columns < _CHUNKED_MIN_COLUMNS:
        dk = jnp.matmul(_im2col(x_padded, k_h, k_w, out_h, out_w).T, dy_BxHoxWoxO.reshape(-1, out_c),
                        preferred_element_type=jnp.float32)
        return dk.reshape(kernel_shape)
    chunk = math.gcd(batch, _KERNEL_GRAD_CHUNK)
    xs = x_padded.reshape(batch // chunk, chunk, *x_padded.shape[1:])
    dys = dy_BxHoxWoxO.reshape(batch // chunk, chunk, out_h, out_w, out_c)

    def accumulate(dk_OxCols, x_and_dy):
        x, dy = x_and_dy
        cols = _im2col(x, k_h, k_w, out_h, out_w)
        return dk_OxCols + jnp.matmul(dy.reshape(-1, out_c).T, cols, preferred_element_type=jnp.float32), None

    dk_OxCols, _ = jax.lax.scan(accumulate, jnp.zeros((out_c, columns), jnp.float32), (xs, dys))
    return dk_OxCols.T.reshape(kernel_shape)


def _input_grad(dy_BxHoxWoxO: jax.Array, kernel: jax.Array, padding: Padding) -> jax.Array:
    """dL/dx: the output gradient convolved with the flipped, transposed kernel ("full" padding).

    For a single input channel, XLA's convolution with one output feature is slow on CPU; there
    the gradient is one matmul (every output position's contribution to its window, col2im's
    columns) and a sum of the shifted windows.
    """
    k_h, k_w, channels, out_c = kernel.shape
    (top, bottom), (left, right) = padding
    if channels > 1:
        flipped = jnp.flip(kernel, (0, 1)).swapaxes(2, 3)
        return _conv(dy_BxHoxWoxO, flipped, ((k_h - 1 - top, k_h - 1 - bottom), (k_w - 1 - left, k_w - 1 - right)))
    batch, out_h, out_w, _ = dy_BxHoxWoxO.shape
    cols = (dy_BxHoxWoxO.reshape(-1, out_c) @ kernel.reshape(k_h * k_w, out_c).T).reshape(batch, out_h, out_w, k_h, k_w)
    dx_padded = sum(jnp.pad(cols[..., i, j], ((0, 0), (i, k_h - 1 - i), (j, k_w - 1 - j)))
                    for i in range(k_h) for j in range(k_w))
    height, width = out_h + k_h - 1 - top - bottom, out_w + k_w - 1 - left - right
    return dx_padded[:, top:top + height, left:left + width, None]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d(x_BxHxWxC: jax.Array, kernel_KxKxCxO: jax.Array, padding: Padding) -> jax.Array:
    """Stride-1 2D convolution, NHWC x HWIO, whose gradients are computed as matmuls where XLA is slow.

    Values and gradients equal `lax.conv_general_dilated`'s. On CPU, XLA lowers the kernel
    gradient of a convolution to a generic convolution that runs at a fraction of the machine's
    matmul speed; contracting im2col matrices with the output gradient, a few images at a time,
    is 1.5-3x faster. The forward pass and (but for single-channel inputs) the input gradient
    stay on XLA's convolution, which is fast.
    """
    return _conv(x_BxHxWxC, kernel_KxKxCxO, padding)


def _conv2d_fwd(x, kernel, padding):
    return _conv(x, kernel, padding), (x, kernel)


def _conv2d_bwd(padding, residuals, dy_BxHoxWoxO):
    x, kernel = residuals
    (top, bottom), (left, right) = padding
    dx = _input_grad(dy_BxHoxWoxO, kernel, padding)
    dkernel = _kernel_grad(jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0))), dy_BxHoxWoxO, kernel.shape)
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
