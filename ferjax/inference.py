"""Emotions of the faces in real photos: detect, preprocess as the paper does, classify.

    import ferjax
    faces = ferjax.predict(rgb_array)   # [{'box': [x, y, w, h], 'emotion': 'happy', 'probs': {...}}]

Faces are found with scikit-image's bundled LBP frontal-face cascade (nothing is downloaded).
Each face crop then goes through the paper's preprocessing: luminosity grayscale, anti-aliased
resize to 48x48, saturation (an identity for luminosity grayscale, see `preprocess`), and the
training-mean subtraction stored with the model. Without a checkpoint, the model bundled in
`ferjax/assets/` is used.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np

from ferjax import checkpoint, data, models, preprocess, train
from ferjax.configs import Config

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
DEFAULT_MODEL = os.path.join(ASSETS, "default_model")  # .msgpack weights + .json meta
MAX_PIXELS = 50_000_000  # larger images are refused before decoding
CLASSIFY_BATCH = 256  # faces per forward pass in `Predictor.classify`: bounds its memory for any number of faces
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class PredictError(Exception):
    """One input that cannot be processed; the message names the file."""


# ----------------------------------------------------------------------------- models


def export_model(state: train.TrainState, meta: dict, path: str, dtype=np.float16) -> tuple[str, str]:
    """Writes the inference part of a state (weights and BN statistics in `dtype`, the mean face) and its meta.

    Returns the (weights, meta) file paths: `path`.msgpack and `path`.json.
    """
    weights = jax.tree.map(lambda x: np.asarray(x, dtype), {"params": state.params, "batch_stats": state.batch_stats})
    payload = {**weights, "mean_image": np.asarray(state.mean_image, np.float32)}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".msgpack", "wb") as f:
        f.write(flax.serialization.msgpack_serialize(payload))
    with open(path + ".json", "w") as f:
        json.dump(meta, f, indent=2)
    return path + ".msgpack", path + ".json"


def weights_fingerprint(state: train.TrainState) -> str:
    """A short hash of what a model computes with (weights, batch-norm statistics, mean face, as float32).

    It names a model wherever its files lie: a student's metrics record its teachers' fingerprints,
    and an exported model's card its own.
    """
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves({"params": state.params, "batch_stats": state.batch_stats,
                                 "mean_image": state.mean_image}):
        digest.update(np.asarray(leaf, np.float32).tobytes())
    return digest.hexdigest()[:16]


def pick_storage(candidates: list[dict], max_bytes: int | None = None) -> dict:
    """The export to ship: the best val accuracy among `candidates` that fit `max_bytes`, the smaller on ties.

    Each candidate holds 'bytes' and 'val_accuracy' (of the exported file, reloaded). Test accuracy never
    chooses, as val alone selects models. Raises ValueError when none fits.
    """
    fitting = [c for c in candidates if max_bytes is None or c["bytes"] <= max_bytes]
    if not fitting:
        sizes = ", ".join(f"{c['bytes'] / 1e6:.1f} MB" for c in candidates)
        raise ValueError(f"no storage fits {max_bytes / 1e6:.1f} MB (the exports take {sizes})")
    return max(fitting, key=lambda c: (c["val_accuracy"], -c["bytes"]))


def _load_exported(path: str) -> tuple[train.TrainState, dict]:
    try:
        with open(path + ".json") as f:
            meta = json.load(f)
        with open(path + ".msgpack", "rb") as f:
            payload = flax.serialization.msgpack_restore(f.read())
        config = Config.from_dict(meta["config"])
    except (OSError, ValueError, KeyError) as e:
        raise checkpoint.CheckpointError(f"{path}: unreadable exported model ({type(e).__name__}: {e})") from None
    model = models.create(config.model, **config.model_kwargs())
    as_float32 = functools.partial(jax.tree.map, lambda x: jnp.asarray(x, jnp.float32))
    state = train.TrainState(step=0, apply_fn=model.apply, params=as_float32(payload["params"]), tx=None,
                             opt_state=None, batch_stats=as_float32(payload["batch_stats"]),
                             mean_image=jnp.asarray(payload["mean_image"]),
                             class_weights=jnp.ones(data.NUM_CLASSES), crop=config.crop)
    return state, meta


def locate_model(path: str | None = None) -> tuple[str, bool]:
    """(path, whether it is an exported model) for what `load_model` takes, without reading it: scripts call
    it before loading the data, so that a mistyped path fails at once.

    Raises:
      CheckpointError: the path is empty or names nothing.
    """
    if path is None:
        path = DEFAULT_MODEL
    elif not path:
        raise checkpoint.CheckpointError("an empty path names no model")
    if os.path.exists(path + ".msgpack"):
        return path, True
    if path == DEFAULT_MODEL:
        raise checkpoint.CheckpointError(f"{path}.msgpack: the bundled model is missing; pass --checkpoint")
    if not os.path.exists(path):
        raise checkpoint.CheckpointError(f"{path}: no such checkpoint or workdir")
    return path, False


def load_model(path: str | None = None) -> tuple[train.TrainState, dict]:
    """A training workdir or checkpoint folder, an exported model (path without suffix), or, for None, the
    bundled one. An empty path is an error: a stray comma in a list of paths must not name the bundled model."""
    path, exported = locate_model(path)
    return _load_exported(path) if exported else checkpoint.load(path)


class Predictor:
    """A loaded model with its preprocessing; call `predict` on images (HxW or HxWx3 arrays)."""

    def __init__(self, path: str | None = None, *, min_face_fraction: float = 0.1, tta: str = "none",
                 reframe: bool = False):
        """`tta` averages the probabilities over test-time augmentations (`train.TTA_MODES`): 'flip' adds
        the mirrored face, 'tencrop' ten windows; the model card gives the test accuracy of each.
        `reframe` also averages them over each face's box scaled and moved (REFRAMINGS): the model
        scores the detector's crops below FER2013's own framing of the same faces (scripts/photo_framing.py)."""
        train.check_tta(tta)  # before loading, not at the first face
        self.state, self.meta = load_model(path)
        self.config = Config.from_dict(self.meta["config"])
        if self.meta.get("hog_dim"):
            raise checkpoint.CheckpointError(f"{path}: HOG fusion models are not supported for photos yet")
        self.class_names = tuple(self.meta.get("class_names", data.CLASS_NAMES))
        self.min_face_fraction = min_face_fraction
        self.framings = REFRAMINGS if reframe else ((1.0, 0, 0),)
        self._probs = jax.jit(lambda state, faces: jnp.exp(
            train.tta_log_probs(state, {"image": faces}, tta=tta, standardize=self.config.standardize)))

    def classify(self, faces_Nx48x48: np.ndarray) -> np.ndarray:
        """Class probabilities [N, 7] of already-cropped 48x48 faces (uint8 or [0, 255] floats).

        Any N: the faces go through in chunks of at most CLASSIFY_BATCH, each filled up with repeats of its
        faces to a power of two, so memory stays bounded and a few shapes compile.
        """
        faces = np.asarray(faces_Nx48x48, np.float32)
        probs = [np.zeros((0, len(self.class_names)), np.float32)]
        for start in range(0, len(faces), CLASSIFY_BATCH):
            chunk = faces[start:start + CLASSIFY_BATCH]
            padded = np.resize(chunk, (1 << (len(chunk) - 1).bit_length(), *chunk.shape[1:]))
            probs.append(np.asarray(self._probs(self.state, padded))[:len(chunk)])
        return np.concatenate(probs)

    def predict(self, image: np.ndarray, *, detect: bool = True) -> list[dict]:
        """Per face: its box [x, y, w, h], the most likely emotion and all seven probabilities.

        With detect=False the whole image is treated as one face.
        """
        gray = to_gray(image)
        boxes = detect_faces(gray, self.min_face_fraction) if detect else [(0, 0, gray.shape[1], gray.shape[0])]
        if not boxes:
            return []
        crops = np.stack([crop_face(gray, box, *framing) for box in boxes for framing in self.framings])
        probs = self.classify(crops).reshape(len(boxes), len(self.framings), -1).mean(1)
        return [{"box": [int(v) for v in box], "emotion": self.class_names[int(p.argmax())],
                 "probs": {name: round(float(q), 4) for name, q in zip(self.class_names, p)}}
                for box, p in zip(boxes, probs)]


@functools.lru_cache(maxsize=len(train.TTA_MODES))
def default_predictor(tta: str = "none") -> Predictor:
    return Predictor(tta=tta)


def predict(image: np.ndarray, *, detect: bool = True, tta: str = "none") -> list[dict]:
    """Faces and emotions in one image array, with the bundled model. See `Predictor`."""
    return default_predictor(tta).predict(image, detect=detect)


# ----------------------------------------------------------------------------- images and faces


def to_gray(image: np.ndarray) -> np.ndarray:
    """Luminosity grayscale in [0, 255], float32 HxW, of a gray, RGB or RGBA array."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        return preprocess.rgb_to_grayscale(image[..., :3])
    if image.ndim == 3 and image.shape[-1] in (1, 2):
        return image[..., 0].astype(np.float32)
    if image.ndim == 2:
        return image.astype(np.float32)
    raise PredictError(f"expected a gray or colour image, got an array of shape {image.shape}")


@functools.lru_cache(maxsize=1)
def _cascade():
    from skimage import data as skdata
    from skimage.feature import Cascade

    return Cascade(skdata.lbp_frontal_face_cascade_filename())


def _overlap(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    inter = max(0, min(ax + aw, bx + bw) - max(ax, bx)) * max(0, min(ay + ah, by + bh) - max(ay, by))
    return inter / min(aw * ah, bw * bh)


def detect_faces(gray_HxW: np.ndarray, min_face_fraction: float = 0.1) -> list[tuple[int, int, int, int]]:
    """Frontal faces as (x, y, w, h) boxes, largest first.

    Faces smaller than `min_face_fraction` of the image's shorter side are ignored: the LBP
    cascade's false alarms are mostly small. Boxes mostly inside a larger one are dropped.
    """
    height, width = gray_HxW.shape
    smallest = max(24, int(min(height, width) * min_face_fraction))
    found = _cascade().detect_multi_scale(img=np.asarray(gray_HxW, np.float32) / 255.0, scale_factor=1.1,
                                          step_ratio=1, min_size=(smallest, smallest),
                                          max_size=(min(height, width),) * 2, min_neighbor_number=8)
    boxes = sorted(((d["c"], d["r"], d["width"], d["height"]) for d in found), key=lambda b: -b[2] * b[3])
    kept = []
    for box in boxes:
        if all(_overlap(box, other) < 0.5 for other in kept):
            kept.append(box)
    return kept


def framing_grid(scales, moves) -> tuple[tuple[float, float, float], ...]:
    """(scale, dx, dy) views for `crop_face`: the box at each scale, as it is and moved by each of `moves`
    (fractions of its size) left, right, up and down."""
    offsets = [(0.0, 0.0)] + [offset for m in moves for offset in ((-m, 0.0), (m, 0.0), (0.0, -m), (0.0, m))]
    return tuple((scale, dx, dy) for scale in scales for dx, dy in offsets)


# The views `Predictor(reframe=True)` averages: the box at 0.9-1.2 times its size, each as it is and moved by 5%
# and 10% of its size each way. Chosen on val among the grids scripts/photo_framing.py scores.
REFRAMINGS = framing_grid((0.9, 1.0, 1.1, 1.2), (0.05, 0.1))


def crop_face(gray_HxW: np.ndarray, box, scale: float = 1.0, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    """The uint8 48x48 face in `box` (x, y, w, h) scaled by `scale` about its centre and moved by dx of its
    width and dy of its height. Where the framed box leaves the image, the image's border pixels are repeated.
    """
    x, y, w, h = box
    left, top = x + (1 - scale) * w / 2 + dx * w, y + (1 - scale) * h / 2 + dy * h
    height, width = gray_HxW.shape
    rows = np.clip(np.arange(round(top), round(top + scale * h)), 0, height - 1)
    cols = np.clip(np.arange(round(left), round(left + scale * w)), 0, width - 1)
    return preprocess.to_face(gray_HxW[np.ix_(rows, cols)], data.IMAGE_SIZE)


def read_image(path: str) -> np.ndarray:
    """Decodes an image file to an array, refusing non-images, truncated files and absurd sizes."""
    from PIL import Image

    if not os.path.isfile(path):
        raise PredictError(f"{path}: no such file")
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_PIXELS:
                raise PredictError(f"{path}: image too large ({image.width}x{image.height}; "
                                   f"limit {MAX_PIXELS // 1_000_000} megapixels)")
            image.load()
            if image.mode not in ("L", "RGB", "RGBA", "LA"):
                image = image.convert("RGB")
            return np.asarray(image)
    except PredictError:
        raise
    except Exception as e:  # PIL raises many types for corrupt or non-image files
        raise PredictError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None


def expand_inputs(patterns: list[str]) -> list[str]:
    """Files, folders (their images, sorted) and glob patterns -> file paths, in order.

    A pattern that matches nothing is kept, so that it is reported as missing.
    """
    paths = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            paths += sorted(os.path.join(pattern, f) for f in os.listdir(pattern) if f.lower().endswith(IMAGE_SUFFIXES))
        elif any(ch in pattern for ch in "*?["):
            paths += sorted(glob.glob(pattern, recursive=True)) or [pattern]
        else:
            paths.append(pattern)
    return paths


def annotate(image: np.ndarray, faces: list[dict]) -> np.ndarray:
    """A colour copy of the image with a box and label drawn for every face."""
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(np.asarray(image, np.uint8)).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    thickness = max(2, min(canvas.size) // 200)
    for face in faces:
        x, y, w, h = face["box"]
        draw.rectangle([x, y, x + w, y + h], outline=(255, 215, 0), width=thickness)
        label = f"{face['emotion']} {face['probs'][face['emotion']]:.0%}"
        left, top, right, bottom = draw.textbbox((x, y), label)
        draw.rectangle([x, y - (bottom - top) - 4, x + (right - left) + 4, y], fill=(255, 215, 0))
        draw.text((x + 2, y - (bottom - top) - 3), label, fill=(0, 0, 0))
    return np.asarray(canvas)
