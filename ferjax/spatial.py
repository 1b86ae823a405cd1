"""Affine grids and bilinear grid sampling for the spatial transformer, in JAX.

Semantics are those of PyTorch's ``affine_grid`` followed by
``grid_sample(mode='bilinear', padding_mode='zeros', align_corners=False)``:

* Normalised coordinates run from -1 to 1 across the *edges* of the image, so the centre
  of pixel ``i`` of ``n`` sits at ``(2 i + 1) / n - 1`` (align_corners=False).
* ``theta`` maps output coordinates to input coordinates: ``[x_in, y_in] = theta @ [x_out, y_out, 1]``.
* Samples outside the image read zeros; each of the four bilinear taps is zeroed on its own.

Images are channels-last (``BxHxWxC``); both functions are differentiable with respect to
the image and to ``theta`` (through the bilinear weights), and jit/vmap friendly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def affine_grid(theta_Bx2x3: jax.Array, height: int, width: int) -> jax.Array:
    """Sampling grid for an output of size height x width.

    Args:
      theta_Bx2x3: affine transforms from output to input normalised coordinates.
      height: output height.
      width: output width.

    Returns:
      grid_BxHxWx2: input (x, y) normalised coordinates for every output pixel.
    """
    xs_W = (2 * jnp.arange(width, dtype=theta_Bx2x3.dtype) + 1) / width - 1
    ys_H = (2 * jnp.arange(height, dtype=theta_Bx2x3.dtype) + 1) / height - 1
    x_HxW, y_HxW = jnp.meshgrid(xs_W, ys_H, indexing="xy")
    base_HxWx3 = jnp.stack([x_HxW, y_HxW, jnp.ones_like(x_HxW)], axis=-1)
    return jnp.einsum("hwk,bjk->bhwj", base_HxWx3, theta_Bx2x3)


def grid_sample(image_BxHxWxC: jax.Array, grid_BxhxwX2: jax.Array) -> jax.Array:
    """Bilinear sampling of `image` at `grid` with zero padding (align_corners=False).

    Args:
      image_BxHxWxC: the images to sample.
      grid_BxhxwX2: normalised (x, y) sampling positions, e.g. from `affine_grid`.

    Returns:
      The sampled images, Bxhxwx C.
    """
    _, height, width, _ = image_BxHxWxC.shape
    # Normalised -> pixel coordinates (pixel centres at integers).
    x_Bxhxw = ((grid_BxhxwX2[..., 0] + 1) * width - 1) / 2
    y_Bxhxw = ((grid_BxhxwX2[..., 1] + 1) * height - 1) / 2
    x0 = jnp.floor(x_Bxhxw)
    y0 = jnp.floor(y_Bxhxw)
    wx1 = x_Bxhxw - x0
    wy1 = y_Bxhxw - y0

    gather = jax.vmap(lambda img_HxWxC, yi, xi: img_HxWxC[yi, xi])

    def tap(yi, xi, weight_Bxhxw):
        inside = (xi >= 0) & (xi <= width - 1) & (yi >= 0) & (yi <= height - 1)
        yi = jnp.clip(yi, 0, height - 1).astype(jnp.int32)
        xi = jnp.clip(xi, 0, width - 1).astype(jnp.int32)
        values_BxhxwxC = gather(image_BxHxWxC, yi, xi)
        return values_BxhxwxC * jnp.where(inside, weight_Bxhxw, 0)[..., None].astype(image_BxHxWxC.dtype)

    return (
        tap(y0, x0, (1 - wy1) * (1 - wx1))
        + tap(y0, x0 + 1, (1 - wy1) * wx1)
        + tap(y0 + 1, x0, wy1 * (1 - wx1))
        + tap(y0 + 1, x0 + 1, wy1 * wx1)
    )


def nearest_similarity(theta_Bx2x3: jax.Array) -> jax.Array:
    """The similarity transforms (turn, uniform zoom, shift) closest to `theta` in the Frobenius norm.

    The linear part is projected onto the matrices [[a, -b], [b, a]]: a is the mean of the diagonal,
    b half the difference of the off-diagonal entries, so shear and unequal zooms are dropped. The
    translation is kept.
    """
    linear_Bx2x2 = theta_Bx2x3[:, :, :2]
    a_B = (linear_Bx2x2[:, 0, 0] + linear_Bx2x2[:, 1, 1]) / 2
    b_B = (linear_Bx2x2[:, 1, 0] - linear_Bx2x2[:, 0, 1]) / 2
    similar_Bx2x2 = jnp.stack([jnp.stack([a_B, -b_B], -1), jnp.stack([b_B, a_B], -1)], axis=1)
    return jnp.concatenate([similar_Bx2x2, theta_Bx2x3[:, :, 2:]], axis=-1)


def warp(image_BxHxWxC: jax.Array, theta_Bx2x3: jax.Array) -> jax.Array:
    """Resamples each image through its affine transform, keeping its size."""
    _, height, width, _ = image_BxHxWxC.shape
    return grid_sample(image_BxHxWxC, affine_grid(theta_Bx2x3, height, width))

