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


def pad_to_even(x_BxHxWxC: jax.Array) -> jax.Array:
    """Repeats the last row / column of an odd-sized map, so that 2x2 pooling keeps it (ceil mode).

    The copy leaves every window's maximum unchanged, and its share of a tied maximum's gradient
    flows back to the edge through the pad, so values and gradients equal -inf ('SAME') padding's.
    """
    height, width = x_BxHxWxC.shape[1:3]
    return jnp.pad(x_BxHxWxC, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")


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


def _batch_stats(x_BxF: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-feature mean and (biased) variance over every axis but the last, in float32, as nn.BatchNorm."""
    axes = tuple(range(x_BxF.ndim - 1))
    x = x_BxF.astype(jnp.float32)
    mean = x.mean(axes)
    return mean, jnp.maximum(0.0, jnp.square(x).mean(axes) - jnp.square(mean))


def _broadcast(v_F: jax.Array, ndim: int) -> jax.Array:
    return v_F.reshape((1,) * (ndim - 1) + (-1,))


def _normalize_relu(x_BxF, scale_F, bias_F, mean_F, var_F, epsilon: float) -> jax.Array:
    mul_F = jax.lax.rsqrt(var_F + epsilon) * scale_F
    return jax.nn.relu((x_BxF.astype(jnp.float32) - _broadcast(mean_F, x_BxF.ndim)) * _broadcast(mul_F, x_BxF.ndim)
                       + _broadcast(bias_F, x_BxF.ndim))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_relu(x_BxF: jax.Array, scale_F: jax.Array, bias_F: jax.Array, epsilon: float) -> jax.Array:
    """ReLU of batch norm with the batch's own statistics (over every axis but the last), in float32.

    Values and gradients equal those of `nn.BatchNorm` (training mode) followed by `nn.relu`. The
    gradient is written out: the scale and bias gradients from one pair of sums over the activations,
    the input's from one elementwise pass. XLA's autodiff of the pair spreads the same work over more
    fusions on CPU; written out, a `cnn_medium` train step runs 5-7% faster (A/B in one process).
    """
    return _normalize_relu(x_BxF, scale_F, bias_F, *_batch_stats(x_BxF), epsilon)


def _batch_norm_relu_fwd(x, scale, bias, epsilon):
    mean, var = _batch_stats(x)
    y = _normalize_relu(x, scale, bias, mean, var, epsilon)
    return y, (x, y, scale, mean, var)


def _batch_norm_relu_bwd(epsilon, residuals, dy):
    x, y, scale, mean, var = residuals
    axes, ndim = tuple(range(x.ndim - 1)), x.ndim
    count = x.size // x.shape[-1]
    inv_std = jax.lax.rsqrt(var + epsilon)
    x_hat = (x.astype(jnp.float32) - _broadcast(mean, ndim)) * _broadcast(inv_std, ndim)
    dz = jnp.where(y > 0, dy.astype(jnp.float32), 0.0)  # through the ReLU
    dbias, dscale = dz.sum(axes), (dz * x_hat).sum(axes)
    # The batch mean and variance depend on x too: their share of the gradient is the two subtracted terms.
    dx = _broadcast(scale * inv_std / count, ndim) * (count * dz - _broadcast(dbias, ndim)
                                                      - x_hat * _broadcast(dscale, ndim))
    return dx.astype(x.dtype), dscale, dbias


batch_norm_relu.defvjp(_batch_norm_relu_fwd, _batch_norm_relu_bwd)


class BatchNormReLU(nn.Module):
    """`nn.BatchNorm` then `nn.relu`, with nn.BatchNorm's variables, its gradient computed by `batch_norm_relu`.

    Parameters 'scale' and 'bias', running averages 'mean' and 'var' in 'batch_stats', updated as
    nn.BatchNorm updates them, so checkpoints of either load into the other.
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BxF: jax.Array, *, train: bool) -> jax.Array:
        features = x_BxF.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        running_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
        running_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
        if not train:
            y = _normalize_relu(x_BxF, scale, bias, running_mean.value, running_var.value, self.epsilon)
            return y.astype(self.dtype)
        if not self.is_initializing():
            # For the running averages only; XLA shares these reductions with batch_norm_relu's forward.
            mean, var = jax.lax.stop_gradient(_batch_stats(x_BxF))
            running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
            running_var.value = self.momentum * running_var.value + (1 - self.momentum) * var
        return batch_norm_relu(x_BxF, scale, bias, self.epsilon).astype(self.dtype)
