"""The paper's preprocessing against hand-computed values, and the on-device augmentation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.transform import resize as sk_resize

from ferjax import configs, data, preprocess, spatial


def test_luminosity_weights():
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]], np.uint8)
    gray = preprocess.rgb_to_grayscale(rgb)
    np.testing.assert_allclose(gray[0], [54.213, 182.376, 18.411, 2.126 + 14.304 + 2.166], rtol=1e-6)


def test_saturation_matrix_by_hand():
    np.testing.assert_allclose(preprocess.saturation_matrix(1.0), np.eye(3))
    zero = preprocess.saturation_matrix(0.0)
    np.testing.assert_allclose(zero, [[0.2126, 0.7152, 0.0722]] * 3, rtol=1e-6)
    half = preprocess.saturation_matrix(0.5)
    np.testing.assert_allclose(half[0], [0.5 * 0.2126 + 0.5, 0.5 * 0.7152, 0.5 * 0.0722], rtol=1e-6)


def test_saturation_keeps_luminosity_and_moves_colour(rng):
    rgb = rng.uniform(60, 180, size=(5, 5, 3))
    more = preprocess.adjust_saturation(rgb, 1.5)
    gray = preprocess.adjust_saturation(rgb, 0.0)
    np.testing.assert_allclose(preprocess.rgb_to_grayscale(more), preprocess.rgb_to_grayscale(rgb), rtol=1e-5)
    np.testing.assert_allclose(gray[..., 0], gray[..., 2], rtol=1e-5)  # s = 0: no colour left
    spread = lambda x: (x.max(-1) - x.min(-1)).mean()  # noqa: E731
    assert spread(more) > spread(rgb) > spread(gray)


def test_resize_is_anti_aliased():
    stripes = np.zeros((96, 96), np.float32)
    stripes[:, ::2] = 255  # one-pixel stripes: plain subsampling would keep only one colour
    resized = preprocess.resize(stripes, 48)
    assert resized.shape == (48, 48)
    np.testing.assert_allclose(resized[8:-8, 8:-8], 127.5, atol=20)
    constant = preprocess.resize(np.full((100, 70), 42.0), 48)
    np.testing.assert_allclose(constant, 42.0, atol=1e-4)


def test_resize_keeps_faces_sharp(fer2013):
    # A face enlarged smoothly (as a photo shows it) comes back close to itself: 1.5 grey levels off on
    # average, where a Gaussian pre-filter (scikit-image's anti-aliasing) leaves it 2.9 off.
    faces = data.stratified_subset(fer2013.test, 50).images.astype(np.float32)
    enlarged = [sk_resize(face, (192, 192), order=3, preserve_range=True) for face in faces]
    error = np.mean([np.abs(preprocess.resize(big, 48) - face).mean() for big, face in zip(enlarged, faces)])
    assert error < 2.0


def test_to_face_converts_any_image():
    face = preprocess.to_face(np.full((64, 64, 4), [100, 100, 100, 255], np.uint8))
    assert face.shape == (48, 48) and face.dtype == np.uint8 and np.all(face == 100)
    gray = np.arange(48 * 48, dtype=np.uint8).reshape(48, 48)
    assert preprocess.to_face(gray) is gray  # already a face: untouched
    with pytest.raises(ValueError, match="shape"):
        preprocess.to_face(np.zeros((2, 3, 4, 5)))


def test_mean_subtraction_and_standardisation():
    images = np.stack([np.full((2, 2), 51), np.full((2, 2), 153)]).astype(np.uint8)
    mean = preprocess.training_mean(images)
    np.testing.assert_allclose(mean, 0.4)  # (0.2 + 0.6) / 2
    normalized = preprocess.normalize(images.astype(np.float32), mean)
    np.testing.assert_allclose(normalized[:, 0, 0], [-0.2, 0.2], atol=1e-6)
    x = np.array([[[1.0, 3.0], [5.0, 7.0]]])
    standardized = preprocess.standardize(x)
    np.testing.assert_allclose(standardized, (x - 4) / np.sqrt(5), atol=1e-5)


def _faces(batch=16):
    return jax.random.uniform(jax.random.key(0), (batch, 48, 48))


def test_no_augmentation_is_identity():
    faces = _faces()
    out, flipped, theta = preprocess.augment(jax.random.key(1), faces, preprocess.Augment(flip=False))
    np.testing.assert_array_equal(out, faces)
    assert not flipped.any()
    np.testing.assert_array_equal(theta, np.broadcast_to(np.eye(2, 3), (16, 2, 3)))


def test_flip_mirrors_exactly_the_reported_images():
    faces = _faces()
    out, flipped, _ = jax.jit(preprocess.augment, static_argnums=2)(jax.random.key(2), faces, preprocess.Augment())
    flipped = np.asarray(flipped)
    assert 0 < flipped.sum() < len(flipped)
    np.testing.assert_array_equal(np.asarray(out)[flipped], np.asarray(faces)[flipped][:, :, ::-1])
    np.testing.assert_array_equal(np.asarray(out)[~flipped], np.asarray(faces)[~flipped])


def test_shift_moves_by_whole_pixels():
    faces = _faces(32)
    aug = preprocess.Augment(flip=False, shift=2)
    out = np.asarray(preprocess.augment(jax.random.key(3), faces, aug)[0])
    faces = np.asarray(faces)
    for face, moved in zip(faces, out):
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                   if np.allclose(moved[2:-2, 2:-2], face[2 + dy:46 + dy, 2 + dx:46 + dx], atol=1e-5)]
        assert len(matches) == 1


def test_subpixel_shift_moves_by_fractions_of_a_pixel_within_the_bound():
    aug = preprocess.Augment(flip=False, shift=2, subpixel_shift=True)
    theta_Bx2x3 = np.asarray(preprocess.random_theta(jax.random.key(3), 256, 48, aug))
    shift_px_Bx2 = theta_Bx2x3[:, :, 2] * 48 / 2
    np.testing.assert_array_equal(theta_Bx2x3[:, :, :2], np.broadcast_to(np.eye(2), (256, 2, 2)))
    assert np.abs(shift_px_Bx2).max() <= 2 and np.abs(shift_px_Bx2).max() > 1.9
    assert np.mean(np.abs(shift_px_Bx2 - np.round(shift_px_Bx2)) > 0.05) > 0.8  # mostly between pixel centres
    whole = preprocess.random_theta(jax.random.key(3), 256, 48, preprocess.Augment(flip=False, shift=2))
    np.testing.assert_allclose(np.asarray(whole)[:, :, 2] * 24, np.round(np.asarray(whole)[:, :, 2] * 24), atol=1e-5)
    with pytest.raises(configs.ConfigError, match="--subpixel_shift=True: needs --shift"):
        configs.tiny_config(subpixel_shift=True)


def test_rotation_and_scale_keep_the_centre_and_change_the_rest():
    faces = _faces(8)
    out, _, theta = preprocess.augment(jax.random.key(4), faces, preprocess.Augment(flip=False, rotate=15, scale=0.1))
    assert out.shape == faces.shape and np.isfinite(np.asarray(out)).all()
    assert float(jnp.abs(out - faces).mean()) > 0.05
    # The reported warp is the one each face went through.
    np.testing.assert_allclose(out, spatial.warp(faces[..., None], theta)[..., 0], atol=1e-6)
    degrees = np.degrees(np.arctan2(theta[:, 1, 0], theta[:, 0, 0]))
    assert np.abs(degrees).max() <= 15 and degrees.std() > 3


def test_rotate_turns_faces_about_their_centre_and_theta_of_the_opposite_angle_undoes_it():
    faces = np.random.default_rng(0).integers(0, 256, (3, 48, 48)).astype(np.uint8)
    np.testing.assert_array_equal(preprocess.rotate(faces, 0), faces)
    # A quarter turn maps pixel centres onto pixel centres, so it is exact: anticlockwise on screen for +90.
    turned = preprocess.rotate(faces, 90)
    assert turned.dtype == np.uint8
    np.testing.assert_array_equal(turned, np.rot90(faces, 1, axes=(1, 2)))
    np.testing.assert_array_equal(preprocess.rotate(faces, -90), np.rot90(faces, -1, axes=(1, 2)))
    # What a spatial transformer answering -90 degrees samples from the turned face is the face.
    back_theta = preprocess.affine_theta(jnp.full((3,), -np.pi / 2), jnp.ones(3), jnp.zeros((3, 2)), 48)
    back = spatial.warp(jnp.asarray(turned, jnp.float32)[..., None], back_theta)[..., 0]
    np.testing.assert_allclose(np.asarray(back), faces, atol=1e-3)


def test_zoom_magnifies_about_the_centre_exactly_on_a_ramp():
    # Bilinear sampling reproduces a linear ramp exactly, so the zoomed ramp is known in closed form:
    # output column c samples input column 23.5 + (c - 23.5) / factor.
    columns = np.arange(48)
    ramp = np.broadcast_to(4 * columns + 50, (2, 48, 48)).astype(np.uint8)
    np.testing.assert_array_equal(preprocess.zoom(ramp, 1.0), ramp)
    magnified = preprocess.zoom(ramp, 2.0)
    assert magnified.dtype == np.uint8
    np.testing.assert_array_equal(magnified, np.broadcast_to(2 * columns + 97, (2, 48, 48)))
    shrunk = preprocess.zoom(ramp, 0.5)  # the face takes the middle half, zeros around it
    np.testing.assert_array_equal(shrunk[:, 12:36, 12:36], np.broadcast_to(8 * columns[12:36] - 44, (2, 24, 24)))
    assert (shrunk[:, :, :11] == 0).all() and (shrunk[:, :11, :] == 0).all()


def test_erase_mask_is_one_rectangle_per_face():
    masks = np.asarray(preprocess.erase_mask(jax.random.key(5), 64, 48, 40, 1.0))
    assert masks.shape == (64, 48, 40)
    for mask in masks:
        rows, cols = np.nonzero(mask)
        area = len(rows)
        assert 0 < area <= 0.3 * 48 * 40
        assert area == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)  # a full rectangle
    assert not np.asarray(preprocess.erase_mask(jax.random.key(5), 64, 48, 40, 0.0)).any()


def test_augmentation_is_deterministic_in_its_key():
    faces = _faces()
    aug = preprocess.Augment(shift=3, rotate=10)
    a = preprocess.augment(jax.random.key(7), faces, aug)[0]
    b = preprocess.augment(jax.random.key(7), faces, aug)[0]
    c = preprocess.augment(jax.random.key(8), faces, aug)[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_mixup_blends_each_face_with_its_partner_by_its_share():
    faces = np.random.default_rng(0).uniform(0, 255, (8, 6, 6)).astype(np.float32)
    mixed, partner, lam = map(np.asarray, preprocess.mixup(jax.random.key(3), jnp.asarray(faces), 0.4))
    np.testing.assert_array_equal(np.sort(partner), np.arange(8))  # a permutation of the batch
    assert np.all((lam >= 0) & (lam <= 1)) and np.ptp(lam) > 0.1
    share = lam[:, None, None]
    np.testing.assert_allclose(mixed, share * faces + (1 - share) * faces[partner], rtol=1e-5)


def test_crop_takes_each_images_window():
    x = jnp.arange(2 * 6 * 6, dtype=jnp.float32).reshape(2, 6, 6)
    offsets = jnp.array([[0, 2], [3, 1]])
    crops = np.asarray(preprocess.crop(x, 3, offsets))
    np.testing.assert_array_equal(crops[0], np.asarray(x)[0, 0:3, 2:5])
    np.testing.assert_array_equal(crops[1], np.asarray(x)[1, 3:6, 1:4])
    corners = preprocess.five_crop_offsets(48, 48, 40)
    assert corners == [(0, 0), (0, 8), (8, 0), (8, 8), (4, 4)]
    random = np.asarray(preprocess.random_crop_offsets(jax.random.key(0), 4000, 48, 48, 40))
    # Every offset 0..8 on both axes occurs, nothing outside.
    assert set(random[:, 0]) == set(range(9)) and set(random[:, 1]) == set(range(9))
