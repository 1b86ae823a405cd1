"""The paper's image operations and the on-device training augmentation.

Host-side (NumPy) operations turn any photo crop into a FER2013-like face:
luminosity grayscale, anti-aliased resize to 48x48, saturation adjustment.
Normalisation (scale to [0, 1], subtract the training-set mean face, optional
per-image standardisation) and augmentation run inside the jitted step on either
NumPy or JAX arrays, so training, evaluation and inference share one definition.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ferjax import spatial

# ITU-R BT.709 luminosity weights, as in the paper.
LUMINOSITY_WEIGHTS = np.array([0.2126, 0.7152, 0.0722], np.float32)


def rgb_to_grayscale(rgb_HxWx3: np.ndarray) -> np.ndarray:
    """Luminosity grayscale: 0.2126 R + 0.7152 G + 0.0722 B (float32, same range as the input)."""
    return np.asarray(rgb_HxWx3, np.float32) @ LUMINOSITY_WEIGHTS


def saturation_matrix(saturation: float) -> np.ndarray:
    """The luminance-weighted 3x3 saturation matrix (Haeberli), with the luminosity weights.

    `saturation` 0 gives grayscale in every channel, 1 the identity, above 1 more saturated colour.
    Each row is ``(1 - s) * weights + s * e_c``.
    """
    return (1 - saturation) * np.tile(LUMINOSITY_WEIGHTS, (3, 1)) + saturation * np.eye(3, dtype=np.float32)


def adjust_saturation(rgb_HxWx3: np.ndarray, saturation: float) -> np.ndarray:
    """Applies `saturation_matrix` to every pixel, clipped to the input's [0, 255] range.

    The matrix keeps luminosity unchanged (its weights sum to 1), so luminosity grayscale of the
    adjusted image equals that of the original up to clipping: on FER2013, already gray, it is
    an identity. It matters where colour is kept, e.g. for the annotated photos `predict` writes.
    """
    adjusted = np.asarray(rgb_HxWx3, np.float32) @ saturation_matrix(saturation).T
    return np.clip(adjusted, 0, 255)


def resize(image_HxW: np.ndarray, size: int = 48) -> np.ndarray:
    """Lanczos resize to size x size (PIL's, anti-aliased), float32 on the input's scale.

    The model wants faces as sharp as FER2013's: on faces cut from photos, scikit-image's Gaussian
    pre-filter cost 2 points of val accuracy that Lanczos keeps (scripts/photo_framing.py). Its
    lobes can overshoot the input's range a little; `to_face` clips.
    """
    from PIL import Image

    image = np.asarray(image_HxW, np.float32)
    if image.shape == (size, size):
        return image
    resized = Image.fromarray(np.ascontiguousarray(image)).resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(resized, np.float32)


def to_face(image: np.ndarray, size: int = 48, saturation: float = 1.0) -> np.ndarray:
    """Any decoded image (gray, gray+alpha, RGB, RGBA) -> uint8 size x size luminosity face."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        rgb = image[..., :3]
        if saturation != 1.0:
            rgb = adjust_saturation(rgb, saturation)
        image = rgb_to_grayscale(rgb)
    elif image.ndim == 3 and image.shape[-1] in (1, 2):
        image = image[..., 0]
    elif image.ndim != 2:
        raise ValueError(f"expected a gray or colour image, got shape {image.shape}")
    if image.shape == (size, size) and image.dtype == np.uint8:
        return image
    return np.clip(np.round(resize(image, size)), 0, 255).astype(np.uint8)


def training_mean(images_NxHxW: np.ndarray) -> np.ndarray:
    """The mean face of the training images, in [0, 1] (float32 HxW)."""
    return (np.asarray(images_NxHxW, np.float64) / 255.0).mean(axis=0).astype(np.float32)


def subtract_mean(images_BxHxW, mean_HxW):
    """Training-set mean subtraction; works on NumPy and JAX arrays."""
    return images_BxHxW - mean_HxW[None]


def standardize(images_BxHxW, eps: float = 1e-6):
    """Per-image zero mean and unit variance; works on NumPy and JAX arrays."""
    mean = images_BxHxW.mean(axis=(-2, -1), keepdims=True)
    std = images_BxHxW.std(axis=(-2, -1), keepdims=True)
    return (images_BxHxW - mean) / (std + eps)


def normalize(images_BxHxW, mean_HxW, per_image_standardize: bool = False):
    """uint8 faces -> model inputs: scale to [0, 1], subtract the training mean, optionally standardise."""
    x = subtract_mean(images_BxHxW / 255.0, mean_HxW)
    return standardize(x) if per_image_standardize else x


# ----------------------------------------------------------------------------- augmentation


@dataclasses.dataclass(frozen=True)
class Augment:
    """Training augmentation, each part switchable. Defaults: the paper's horizontal flip only."""

    flip: bool = True  # horizontal flip with probability 1/2 (the paper's augmentation)
    shift: int = 0  # random translation by up to this many pixels (whole pixels, zero fill)
    subpixel_shift: bool = False  # translations drawn from [-shift, shift] by any fraction of a pixel
    rotate: float = 0.0  # random rotation by up to this many degrees
    scale: float = 0.0  # random zoom by a factor in [1 - scale, 1 + scale]
    erase: float = 0.0  # probability of random erasing (a rectangle set to the mean face)

    @property
    def warps(self) -> bool:
        return bool(self.shift or self.rotate or self.scale)


def affine_theta(angle_B: jax.Array, zoom_B: jax.Array, shift_px_Bx2: jax.Array, size: int) -> jax.Array:
    """Transforms (output -> input, normalised coordinates) that rotate by angle_B (radians), zoom by zoom_B
    and shift by shift_px_Bx2 ((x, y) pixels of a size x size image), Bx2x3."""
    cos_B, sin_B = jnp.cos(angle_B) / zoom_B, jnp.sin(angle_B) / zoom_B
    # A shift of one pixel is 2 / size in normalised coordinates.
    tx_B, ty_B = (2.0 / size) * shift_px_Bx2[:, 0], (2.0 / size) * shift_px_Bx2[:, 1]
    return jnp.stack([jnp.stack([cos_B, -sin_B, tx_B], -1), jnp.stack([sin_B, cos_B, ty_B], -1)], -2)


def random_theta(rng: jax.Array, batch: int, size: int, aug: Augment) -> jax.Array:
    """Random affine transforms (output -> input, normalised coordinates), Bx2x3."""
    k_shift, k_rot, k_scale = jax.random.split(rng, 3)
    if aug.subpixel_shift:  # bilinear sampling between pixel centres: the face comes out blurred
        shift_Bx2 = jax.random.uniform(k_shift, (batch, 2), minval=-aug.shift, maxval=aug.shift)
    else:
        shift_Bx2 = jax.random.randint(k_shift, (batch, 2), -aug.shift, aug.shift + 1).astype(jnp.float32)
    angle_B = jnp.deg2rad(jax.random.uniform(k_rot, (batch,), minval=-aug.rotate, maxval=aug.rotate))
    zoom_B = jax.random.uniform(k_scale, (batch,), minval=1 - aug.scale, maxval=1 + aug.scale)
    return affine_theta(angle_B, zoom_B, shift_Bx2, size)


@jax.jit
def _warp_about_centre(images_BxHxW, radians, zoom) -> jax.Array:
    """Every face turned by `radians` and magnified by `zoom` as the augmentation does (zero fill), as uint8."""
    batch, height, _ = images_BxHxW.shape
    theta_Bx2x3 = affine_theta(jnp.full((batch,), radians), jnp.full((batch,), zoom), jnp.zeros((batch, 2)), height)
    warped = spatial.warp(jnp.asarray(images_BxHxW, jnp.float32)[..., None], theta_Bx2x3)[..., 0]
    return jnp.clip(jnp.round(warped), 0, 255).astype(jnp.uint8)


def rotate(images_BxHxW: np.ndarray, degrees: float) -> np.ndarray:
    """Every face turned by `degrees` about its centre, as `--rotate` turns it (zero fill), rounded to uint8.

    Positive angles sample each output pixel from the input point `degrees` further round from x
    towards y, which on screen (y down) turns the face anticlockwise. A spatial transformer that undoes
    the tilt answers with a theta of angle -`degrees`.
    """
    return np.asarray(_warp_about_centre(images_BxHxW, np.deg2rad(degrees), 1.0))


def zoom(images_BxHxW: np.ndarray, factor: float) -> np.ndarray:
    """Every face magnified by `factor` about its centre, as `--scale` zooms it, rounded to uint8.

    Above 1 the face fills more of the image and its edge is cut off; below 1 it shrinks inside a zero
    border. A spatial transformer that undoes the zoom samples 1/`factor` as far out from the centre:
    its theta magnifies by 1/`factor`.
    """
    return np.asarray(_warp_about_centre(images_BxHxW, 0.0, factor))


def erase_mask(rng: jax.Array, batch: int, height: int, width: int, prob: float) -> jax.Array:
    """Random erasing's rectangles, BxHxW bool: with probability `prob`, 2-25% of the area (aspect 0.3-3.3)."""
    k_apply, k_area, k_aspect, k_y, k_x = jax.random.split(rng, 5)
    area_B = jax.random.uniform(k_area, (batch,), minval=0.02, maxval=0.25) * height * width
    aspect_B = jnp.exp(jax.random.uniform(k_aspect, (batch,), minval=jnp.log(0.3), maxval=jnp.log(3.3)))
    h_B = jnp.clip(jnp.sqrt(area_B * aspect_B), 1, height)
    w_B = jnp.clip(jnp.sqrt(area_B / aspect_B), 1, width)
    y0_B = jax.random.uniform(k_y, (batch,)) * (height - h_B)
    x0_B = jax.random.uniform(k_x, (batch,)) * (width - w_B)
    rows_1xH, cols_1xW = jnp.arange(height)[None], jnp.arange(width)[None]
    in_rows_BxH = (rows_1xH >= y0_B[:, None]) & (rows_1xH < (y0_B + h_B)[:, None])
    in_cols_BxW = (cols_1xW >= x0_B[:, None]) & (cols_1xW < (x0_B + w_B)[:, None])
    apply_B = jax.random.bernoulli(k_apply, prob, (batch,))
    return in_rows_BxH[:, :, None] & in_cols_BxW[:, None, :] & apply_B[:, None, None]


def mixup(rng: jax.Array, x_BxHxW: jax.Array, alpha: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Blends every face with a partner from the same batch (Zhang et al., 2018).

    Face i becomes lam_i * face_i + (1 - lam_i) * face_{partner_i}, lam_i ~ Beta(alpha, alpha) drawn per
    face, partners a random permutation of the batch. Padding rows of a batch repeat real faces (see
    `data.batches`), so every partner is a real face with a real label.

    Returns:
      (mixed faces, partner_B, lam_B): the labels mix with the same partners and weights.
    """
    k_lam, k_partner = jax.random.split(rng)
    batch = x_BxHxW.shape[0]
    lam_B = jax.random.beta(k_lam, alpha, alpha, (batch,))
    partner_B = jax.random.permutation(k_partner, batch)
    lam_Bx1x1 = lam_B[:, None, None]
    return lam_Bx1x1 * x_BxHxW + (1 - lam_Bx1x1) * x_BxHxW[partner_B], partner_B, lam_B


def crop(x_BxHxW: jax.Array, size: int, offsets_Bx2: jax.Array) -> jax.Array:
    """Each image's size x size window whose top-left corner is at its (row, column) offset."""
    return jax.vmap(lambda x, o: jax.lax.dynamic_slice(x, (o[0], o[1]), (size, size)))(x_BxHxW, offsets_Bx2)


def random_crop_offsets(rng: jax.Array, batch: int, height: int, width: int, size: int) -> jax.Array:
    """Uniform top-left corners of size x size windows inside height x width images, Bx2 int32."""
    k_row, k_column = jax.random.split(rng)
    rows_B = jax.random.randint(k_row, (batch,), 0, height - size + 1)
    columns_B = jax.random.randint(k_column, (batch,), 0, width - size + 1)
    return jnp.stack([rows_B, columns_B], -1)


def centre_offset(height: int, width: int, size: int) -> tuple[int, int]:
    """Top-left corner of the centre size x size window: the one a crop-trained model predicts on."""
    return (height - size) // 2, (width - size) // 2


def five_crop_offsets(height: int, width: int, size: int) -> list[tuple[int, int]]:
    """Top-left corners of the four corner windows and the centre one (ten-crop adds their mirrors)."""
    return [(0, 0), (0, width - size), (height - size, 0), (height - size, width - size),
            centre_offset(height, width, size)]


def zoomed_ten_crop(images_BxHxW: jax.Array, size: int) -> list[jax.Array]:
    """The five size x size windows and their mirrors, each resized back to the full image size."""
    _, height, width = images_BxHxW.shape
    crops = [images_BxHxW[:, y:y + size, x:x + size] for y, x in five_crop_offsets(height, width, size)]
    crops += [c[:, :, ::-1] for c in crops]
    return [jax.image.resize(c, (c.shape[0], height, width), "linear") for c in crops]


def augment(rng: jax.Array, x_BxHxW: jax.Array, aug: Augment) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Geometric augmentation of [0, 1] faces, jit-compatible.

    Returns:
      (augmented faces, flipped_B, theta_Bx2x3): which images were mirrored, so that features computed
      on the host (HOG) can follow the flip, and the warp each was sampled through after the flip (the
      identity without shift, rotation or zoom), which `--align_weight` teaches a spatial transformer to undo.
    """
    batch, height, width = x_BxHxW.shape
    k_flip, k_warp = jax.random.split(rng)
    flipped_B = jax.random.bernoulli(k_flip, 0.5, (batch,)) if aug.flip else jnp.zeros((batch,), bool)
    x_BxHxW = jnp.where(flipped_B[:, None, None], x_BxHxW[:, :, ::-1], x_BxHxW)
    if not aug.warps:
        return x_BxHxW, flipped_B, jnp.broadcast_to(jnp.eye(2, 3), (batch, 2, 3))
    theta_Bx2x3 = random_theta(k_warp, batch, height, aug)
    return spatial.warp(x_BxHxW[..., None], theta_Bx2x3)[..., 0], flipped_B, theta_Bx2x3
