"""Affine grid + bilinear sampling against an independent NumPy reference (PyTorch semantics)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ferjax import spatial


def reference_grid_sample(image_BxHxWxC, theta_Bx2x3, out_h, out_w):
    """Loop-by-loop PyTorch affine_grid + grid_sample(bilinear, zeros, align_corners=False)."""
    batch, height, width, channels = image_BxHxWxC.shape
    out = np.zeros((batch, out_h, out_w, channels))
    for b in range(batch):
        for i in range(out_h):
            for j in range(out_w):
                xn, yn = (2 * j + 1) / out_w - 1, (2 * i + 1) / out_h - 1
                x_in, y_in = theta_Bx2x3[b] @ np.array([xn, yn, 1.0])
                px, py = ((x_in + 1) * width - 1) / 2, ((y_in + 1) * height - 1) / 2
                x0, y0 = int(np.floor(px)), int(np.floor(py))
                for yy, xx in ((y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)):
                    weight = (1 - abs(px - xx)) * (1 - abs(py - yy))
                    if 0 <= yy < height and 0 <= xx < width:
                        out[b, i, j] += weight * image_BxHxWxC[b, yy, xx]
    return out


@pytest.mark.parametrize("height,width,out_h,out_w", [(7, 7, 7, 7), (6, 9, 5, 8), (8, 5, 10, 4)])
def test_matches_reference_on_random_images_and_thetas(height, width, out_h, out_w):
    rng = np.random.default_rng(height * 100 + width)
    image = rng.normal(size=(3, height, width, 2))
    # Random affine maps, large enough that many samples fall outside the image (zero padding).
    theta = np.eye(2, 3)[None] + rng.normal(scale=0.5, size=(3, 2, 3))
    grid = spatial.affine_grid(jnp.asarray(theta, jnp.float32), out_h, out_w)
    ours = spatial.grid_sample(jnp.asarray(image, jnp.float32), grid)
    expected = reference_grid_sample(image, theta, out_h, out_w)
    assert ours.shape == (3, out_h, out_w, 2)
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    outside = np.abs(np.asarray(grid)).max(-1) > 1 + 2 / min(height, width)
    assert outside.any(), "the thetas should send some samples outside the image"


def test_image_gradient_is_the_transposed_reference_sampling():
    # Sampling is linear in the image, so the gradient of <sample(image), cotangent> with respect to
    # pixel p is <sample(e_p), cotangent>, with e_p the image that is 1 at p and 0 elsewhere.
    rng = np.random.default_rng(7)
    theta = np.eye(2, 3)[None] + rng.normal(scale=0.5, size=(1, 2, 3))
    cotangent = rng.normal(size=(1, 5, 6, 1))
    grid = spatial.affine_grid(jnp.asarray(theta, jnp.float32), 5, 6)
    ours = jax.grad(lambda image: jnp.sum(spatial.grid_sample(image, grid) * cotangent))(jnp.zeros((1, 4, 5, 1)))
    expected = np.zeros((1, 4, 5, 1))
    for y in range(4):
        for x in range(5):
            unit = np.zeros((1, 4, 5, 1))
            unit[0, y, x] = 1
            expected[0, y, x] = np.sum(reference_grid_sample(unit, theta, 5, 6) * cotangent)
    assert np.abs(expected).sum() > 0
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_affine_grid_identity_is_pixel_centres():
    grid = spatial.affine_grid(jnp.eye(2, 3)[None], 2, 4)
    np.testing.assert_allclose(grid[0, 0, :, 0], [-0.75, -0.25, 0.25, 0.75])
    np.testing.assert_allclose(grid[0, :, 0, 1], [-0.5, 0.5])


def test_identity_theta_returns_input():
    image = jax.random.normal(jax.random.key(0), (2, 48, 48, 3))
    warped = spatial.warp(image, jnp.broadcast_to(jnp.eye(2, 3), (2, 2, 3)))
    np.testing.assert_allclose(warped, image, rtol=1e-5, atol=1e-5)


def test_translation_moves_image_by_whole_pixels():
    image = jax.random.normal(jax.random.key(1), (1, 10, 12, 1))
    # theta maps output to input: x_in = x_out + 2 * 3 / 12 reads three pixels to the right.
    theta = jnp.array([[[1.0, 0.0, 2 * 3 / 12], [0.0, 1.0, -2 * 2 / 10]]])
    warped = spatial.warp(image, theta)
    np.testing.assert_allclose(warped[0, 2:, :-3], image[0, :-2, 3:], atol=1e-5)
    np.testing.assert_allclose(warped[0, :, -3:], 0, atol=1e-6)  # zero padding on the right
    np.testing.assert_allclose(warped[0, :2], 0, atol=1e-6)  # and at the top


def test_nearest_similarity_keeps_turn_zoom_and_shift_and_drops_shear():
    angle, zoom = 0.3, 1.2
    turn_and_zoom = zoom * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    similarity = np.concatenate([turn_and_zoom, [[0.1], [-0.2]]], axis=1)
    shear = np.array([[1.0, 0.4, 0.1], [0.0, 1.0, -0.2]])  # [[a, -b], [b, a]] closest: a = 1, b = -0.2
    stretch = np.array([[1.3, 0.0, 0.0], [0.0, 0.7, 0.0]])  # unequal zooms average to 1
    projected = np.asarray(spatial.nearest_similarity(jnp.asarray(np.stack([similarity, shear, stretch]))))
    np.testing.assert_allclose(projected[0], similarity, atol=1e-6)
    np.testing.assert_allclose(projected[1], [[1.0, 0.2, 0.1], [-0.2, 1.0, -0.2]], atol=1e-6)
    np.testing.assert_allclose(projected[2], np.eye(2, 3), atol=1e-6)
    # An orthogonal projection: what it removes is orthogonal to every similarity's linear part.
    theta = np.asarray(jax.random.normal(jax.random.key(3), (5, 2, 3)))
    removed = (theta - np.asarray(spatial.nearest_similarity(jnp.asarray(theta))))[:, :, :2]
    for basis in (np.eye(2), np.array([[0.0, -1.0], [1.0, 0.0]])):
        np.testing.assert_allclose(np.sum(removed * basis, axis=(1, 2)), 0, atol=1e-6)


def test_gradients_reach_image_and_theta():
    image = jax.random.normal(jax.random.key(2), (2, 8, 8, 1))
    # Generic values: no sample lands exactly on a pixel, where bilinear sampling has a kink.
    theta = jnp.broadcast_to(jnp.array([[0.93, 0.07, 0.031], [-0.11, 1.07, 0.017]]), (2, 2, 3))

    def loss(image, theta):
        return jnp.sum(spatial.warp(image, theta) ** 2)

    d_image, d_theta = jax.grad(loss, argnums=(0, 1))(image, theta)
    assert np.abs(np.asarray(d_image)).sum() > 0
    assert np.all(np.abs(np.asarray(d_theta)).sum(axis=(1, 2)) > 0)
    # Finite differences agree for theta.
    eps = 1e-3
    bump = jnp.zeros_like(theta).at[0, 0, 2].set(eps)
    numeric = (loss(image, theta + bump) - loss(image, theta - bump)) / (2 * eps)
    np.testing.assert_allclose(d_theta[0, 0, 2], numeric, rtol=2e-2)
