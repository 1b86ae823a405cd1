"""FER2013: locate, load (image folders or CSV), cache, split, batch.

Three public forms are read, detected from the path given:

1. Kaggle's image-folder release: ``train/<class>/*.jpg`` and ``test/<class>/*.jpg``;
   the split comes from the file-name prefix (``Training_``, ``PublicTest_``, ``PrivateTest_``).
2. The challenge's ``fer2013.csv`` with columns ``emotion,pixels,Usage``.
3. Kaggle's ``icml_face_data.csv``: the same columns, names with leading spaces.

Images in the folder form that are not 48x48 grayscale are *converted* (luminosity
grayscale, anti-aliased resize), never rejected, so every file counts. Unreadable
files, unknown class folders, bad CSV rows and empty splits raise `DataError`
naming the file or row, unless ``skip_bad`` is set, in which case every skipped
sample is reported.

Run ``python -m ferjax.data [--data_dir=DIR]`` for a table of counts.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ferjax import preprocess

# The original challenge CSV's label order; used everywhere.
CLASS_NAMES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SIZE = 48
SPLITS = ("train", "val", "test")
# Challenge "Usage" value -> our split name.
USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
DEFAULT_DATA_DIR = os.path.join("data", "fer2013")
DATA_DIR_ENV = "FER2013_DIR"
CACHE_DIR_ENV = "FERJAX_CACHE_DIR"
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
_CSV_NAMES = ("fer2013.csv", "icml_face_data.csv")
_CACHE_VERSION = 1

HOW_TO_GET = (
    "download FER2013 from Kaggle (the image-folder release 'msambare/fer2013' or the challenge's "
    "fer2013.csv) and pass --data_dir=DIR or set FER2013_DIR"
)


class DataError(Exception):
    """Missing or malformed data; the message names the file, row or flag."""


@dataclasses.dataclass(frozen=True)
class Split:
    """One split: uint8 faces, int32 labels in CLASS_NAMES order, and a source id per sample."""

    images: np.ndarray  # uint8 [N, 48, 48]
    labels: np.ndarray  # int32 [N]
    sources: np.ndarray  # str [N]: relative file path, or "csv:<line>"

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> Split:
        return Split(self.images[index], self.labels[index], self.sources[index])

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=NUM_CLASSES)


@dataclasses.dataclass(frozen=True)
class FER2013:
    """The three splits plus where they came from."""

    train: Split
    val: Split
    test: Split
    source: str
    skipped: tuple[str, ...] = ()  # samples dropped under skip_bad, each "source: reason"

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        return getattr(self, name)


# ----------------------------------------------------------------------------- locating


def resolve_data_dir(data_dir: str | None = None) -> str:
    """Returns --data_dir if given, else $FER2013_DIR if set, else data/fer2013.

    Raises:
      DataError: that path does not exist; the message says where it looked and why there.
    """
    if data_dir:
        how, path = "--data_dir", data_dir
    elif os.environ.get(DATA_DIR_ENV):
        how, path = f"${DATA_DIR_ENV}", os.environ[DATA_DIR_ENV]
    else:
        how, path = "the default", DEFAULT_DATA_DIR
    if not os.path.exists(path):
        raise DataError(f"FER2013 not found at {os.path.abspath(path)} ({how}): {HOW_TO_GET}")
    return path


def detect_format(path: str) -> tuple[str, str]:
    """Returns (format, path) with format 'folders' or 'csv'."""
    if os.path.isfile(path):
        if path.lower().endswith(".csv"):
            return "csv", path
        raise DataError(f"{path}: not a CSV file nor a FER2013 folder; {HOW_TO_GET}")
    for name in _CSV_NAMES:
        if os.path.isfile(os.path.join(path, name)):
            return "csv", os.path.join(path, name)
    if os.path.isdir(os.path.join(path, "train")) or os.path.isdir(os.path.join(path, "test")):
        return "folders", path
    raise DataError(
        f"{path}: holds neither train/ and test/ class folders nor fer2013.csv / icml_face_data.csv; "
        f"{HOW_TO_GET}"
    )


# ----------------------------------------------------------------------------- image folders


def _split_from_name(filename: str) -> str | None:
    for usage, split in USAGE_TO_SPLIT.items():
        if filename.startswith(usage + "_"):
            return split
    return None


def _list_image_files(root: str) -> list[tuple[str, int, int, str]]:
    """Lists (relative path, split index, label, "size:mtime") of every image under root."""
    entries = []
    for top in ("train", "test"):
        top_dir = os.path.join(root, top)
        if not os.path.isdir(top_dir):
            continue
        for class_dir in sorted(os.scandir(top_dir), key=lambda e: e.name):
            if not class_dir.is_dir():
                continue
            if class_dir.name.lower() not in CLASS_NAMES:
                raise DataError(
                    f"{class_dir.path}: unknown class folder {class_dir.name!r}; "
                    f"expected one of {', '.join(sorted(CLASS_NAMES))}"
                )
            label = CLASS_NAMES.index(class_dir.name.lower())
            for entry in sorted(os.scandir(class_dir.path), key=lambda e: e.name):
                if not entry.name.lower().endswith(_IMAGE_SUFFIXES):
                    continue
                split = _split_from_name(entry.name)
                if split is None:
                    raise DataError(
                        f"{entry.path}: file name lacks a split prefix "
                        "(Training_, PublicTest_ or PrivateTest_)"
                    )
                stat = entry.stat()
                rel = os.path.relpath(entry.path, root)
                entries.append((rel, SPLITS.index(split), label, f"{stat.st_size}:{stat.st_mtime_ns}"))
    return entries


def _read_face(path: str) -> np.ndarray:
    """Decodes one image file to a uint8 48x48 face, converting colour or other sizes."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            array = np.asarray(image)
    except Exception as e:  # PIL raises several types for corrupt, truncated or non-image files.
        raise DataError(f"{path}: unreadable image ({type(e).__name__}: {e})") from None
    return preprocess.to_face(array, IMAGE_SIZE)


def _load_folders(root: str, files: list, skip_bad: bool) -> tuple[dict[str, Split], list[str]]:
    if not files:
        raise DataError(f"{root}: no images under train/<class>/ or test/<class>/")

    def read(rel):
        try:
            return _read_face(os.path.join(root, rel)), None
        except DataError as e:
            if not skip_bad:
                raise
            return None, str(e)

    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        decoded = list(pool.map(read, [f[0] for f in files]))
    skipped = [err for _, err in decoded if err is not None]
    keep = [i for i, (face, _) in enumerate(decoded) if face is not None]
    images = np.stack([decoded[i][0] for i in keep]) if keep else np.zeros((0, 48, 48), np.uint8)
    split_index = np.array([files[i][1] for i in keep], np.int32)
    labels = np.array([files[i][2] for i in keep], np.int32)
    sources = np.array([files[i][0] for i in keep])
    splits = {
        name: Split(images[split_index == s], labels[split_index == s], sources[split_index == s])
        for s, name in enumerate(SPLITS)
    }
    return splits, skipped


# ----------------------------------------------------------------------------- CSV


def _load_csv(path: str, skip_bad: bool) -> tuple[dict[str, Split], list[str]]:
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as e:
        raise DataError(f"{path}: unreadable CSV ({type(e).__name__}: {e})") from None
    frame.columns = [c.strip().lower() for c in frame.columns]
    missing = {"emotion", "pixels", "usage"} - set(frame.columns)
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(sorted(missing))}; expected emotion,pixels,Usage")

    pixels_per_face = IMAGE_SIZE * IMAGE_SIZE
    images, labels, split_index, sources, skipped = [], [], [], [], []
    for row, (emotion, pixels, usage) in enumerate(zip(frame["emotion"], frame["pixels"], frame["usage"])):
        line = row + 2  # 1-based, after the header line
        try:
            label = int(emotion)
            if not 0 <= label < NUM_CLASSES:
                raise ValueError(f"label {emotion!r} outside 0-{NUM_CLASSES - 1}")
            split = USAGE_TO_SPLIT.get(usage.strip())
            if split is None:
                raise ValueError(f"Usage {usage!r} is not one of {', '.join(USAGE_TO_SPLIT)}")
            values = np.array(pixels.split(), dtype=np.int64)
            if values.size != pixels_per_face:
                raise ValueError(f"{values.size} pixels, expected {pixels_per_face}")
            if values.min() < 0 or values.max() > 255:
                raise ValueError("pixel value outside 0-255")
        except ValueError as e:
            message = f"{path}:{line}: bad row ({e})"
            if not skip_bad:
                raise DataError(message) from None
            skipped.append(message)
            continue
        images.append(values.astype(np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE))
        labels.append(label)
        split_index.append(SPLITS.index(split))
        sources.append(f"csv:{line}")
    images = np.stack(images) if images else np.zeros((0, 48, 48), np.uint8)
    labels, split_index, sources = np.array(labels, np.int32), np.array(split_index), np.array(sources)
    splits = {
        name: Split(images[split_index == s], labels[split_index == s], sources[split_index == s])
        for s, name in enumerate(SPLITS)
    }
    return splits, skipped


# ----------------------------------------------------------------------------- cache


def cache_dir() -> str:
    """Where decoded arrays and features are cached: $FERJAX_CACHE_DIR, else ~/.cache/ferjax."""
    default = os.path.join(os.path.expanduser("~"), ".cache", "ferjax")
    return os.environ.get(CACHE_DIR_ENV, default)


def _source_key(path: str, files: list | None, skip_bad: bool) -> str:
    """A key that changes when any source file's name, size or modification time does."""
    digest = hashlib.sha256(f"{_CACHE_VERSION}|{os.path.abspath(path)}|{skip_bad}".encode())
    if files is None:  # a CSV
        stat = os.stat(path)
        digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    else:
        for rel, split, label, stat_key in files:
            digest.update(f"{rel}|{split}|{label}|{stat_key}\n".encode())
    return digest.hexdigest()[:20]


def save_npz_atomic(file: str, arrays: dict[str, np.ndarray]) -> None:
    """Writes an .npz through a temporary file, so a concurrent reader never sees half of it."""
    os.makedirs(os.path.dirname(file), exist_ok=True)
    tmp = f"{file}.{os.getpid()}.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, file)


def _save_cache(file: str, dataset: FER2013) -> None:
    arrays = {}
    for name in SPLITS:
        split = dataset.split(name)
        arrays.update({f"{name}_images": split.images, f"{name}_labels": split.labels,
                       f"{name}_sources": split.sources})
    arrays["skipped"] = np.array(dataset.skipped, dtype=str)
    save_npz_atomic(file, arrays)


def _read_cache(file: str, source: str) -> FER2013 | None:
    try:
        with np.load(file) as z:
            splits = {
                name: Split(z[f"{name}_images"], z[f"{name}_labels"], z[f"{name}_sources"]) for name in SPLITS
            }
            skipped = tuple(str(s) for s in z["skipped"])
    except (OSError, KeyError, ValueError):
        return None  # a missing or damaged cache is rebuilt from the source
    return FER2013(**splits, source=source, skipped=skipped)


# ----------------------------------------------------------------------------- public API


def load(data_dir: str | None = None, *, skip_bad: bool = False, use_cache: bool = True) -> FER2013:
    """Loads FER2013 from --data_dir / $FER2013_DIR / data/fer2013, in any of its three forms.

    Args:
      data_dir: a folder (image layout, or holding fer2013.csv / icml_face_data.csv) or a CSV file.
      skip_bad: skip unreadable images and bad CSV rows instead of raising; they are listed in
        `FER2013.skipped` and logged.
      use_cache: read and write the decoded arrays under $FERJAX_CACHE_DIR (~/.cache/ferjax).

    Raises:
      DataError: missing data, a bad file or row (unless skip_bad), or an empty split.
    """
    path = resolve_data_dir(data_dir)
    fmt, path = detect_format(path)
    files = _list_image_files(path) if fmt == "folders" else None
    cache_file = None
    if use_cache:
        cache_file = os.path.join(cache_dir(), f"fer2013-{_source_key(path, files, skip_bad)}.npz")
        cached = _read_cache(cache_file, path)
        if cached is not None:
            return cached
    if fmt == "csv":
        splits, skipped = _load_csv(path, skip_bad)
    else:
        splits, skipped = _load_folders(path, files, skip_bad)
    for name in SPLITS:
        if len(splits[name]) == 0:
            raise DataError(f"{path}: the {name} split ({usage_of(name)}) is empty")
    dataset = FER2013(**splits, source=path, skipped=tuple(skipped))
    if skipped:
        logging.warning("skipped %d bad sample(s):\n  %s", len(skipped), "\n  ".join(skipped))
    if cache_file:
        try:
            _save_cache(cache_file, dataset)
        except OSError as e:  # a read-only home must not stop training
            logging.warning("could not write the data cache %s: %s", cache_file, e)
    return dataset


def usage_of(split: str) -> str:
    """The challenge CSV's Usage value of a split: 'train' -> 'Training'."""
    return {v: k for k, v in USAGE_TO_SPLIT.items()}[split]


def stratified_subset(split: Split, limit: int | None, seed: int = 0) -> Split:
    """At most `limit` samples with the class proportions of `split` (all of it when limit is None)."""
    if limit is None or limit >= len(split):
        return split
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(split))
    # Sorting the shuffled indices by label and striding keeps every class's share.
    by_class = order[np.argsort(split.labels[order], kind="stable")]
    picks = by_class[np.linspace(0, len(split) - 1, limit).round().astype(int)]
    return split.subset(np.sort(picks))


def stratified_kfold(labels: np.ndarray, folds: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Seeded stratified k-fold: a (train_index, val_index) pair per fold, class shares kept in each.

    Every index lands in exactly one validation fold.
    """
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(labels), np.int64)
    offset = 0
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        # Continue the round-robin where the previous class stopped, so folds stay equal in size.
        fold_of[members] = (np.arange(len(members)) + offset) % folds
        offset += len(members)
    everything = np.arange(len(labels))
    return [(everything[fold_of != k], everything[fold_of == k]) for k in range(folds)]


def batches(
    split: Split,
    batch_size: int,
    *,
    shuffle_seed: int | Sequence[int] | None = None,
    extra: dict[str, np.ndarray] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Yields fixed-shape batches covering every sample exactly once.

    The last batch is padded to `batch_size` with repeated faces that carry a `mask` of 0,
    so losses and accuracies count each sample once and the step compiles for one shape.

    Args:
      split: the samples.
      batch_size: samples per batch.
      shuffle_seed: shuffle with this seed, e.g. (seed, epoch); None keeps the stored order.
      extra: further per-sample arrays (e.g. HOG features) batched alongside.
    """
    n = len(split)
    order = np.arange(n) if shuffle_seed is None else np.random.default_rng(shuffle_seed).permutation(n)
    arrays = {"image": split.images, "label": split.labels, **(extra or {})}
    for start in range(0, n, batch_size):
        index = order[start : start + batch_size]
        real = len(index)
        # Pad with real faces from the start of the order (masked out), so batch norm sees faces.
        index = np.concatenate([index, np.resize(order, batch_size - real)])
        batch = {k: v[index] for k, v in arrays.items()}
        batch["mask"] = (np.arange(batch_size) < real).astype(np.float32)
        yield batch


def num_batches(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


def format_counts(dataset: FER2013) -> str:
    """A Markdown table of per-split, per-class counts."""
    header = "| class | " + " | ".join(f"{s} ({usage_of(s)})" for s in SPLITS) + " |"
    lines = [header, "|---" * (len(SPLITS) + 1) + "|"]
    counts = {s: dataset.split(s).class_counts() for s in SPLITS}
    for c, name in enumerate(CLASS_NAMES):
        lines.append(f"| {c} {name} | " + " | ".join(str(counts[s][c]) for s in SPLITS) + " |")
    lines.append("| total | " + " | ".join(str(len(dataset.split(s))) for s in SPLITS) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    """The data check: per-split, per-class counts and the load time."""
    parser = argparse.ArgumentParser(prog="python -m ferjax.data", description="Check FER2013 and print its counts.")
    parser.add_argument("--data_dir", default=None,
                        help=f"FER2013 folder or CSV (default: ${DATA_DIR_ENV}, else {DEFAULT_DATA_DIR})")
    parser.add_argument("--skip_bad", action="store_true", help="skip and list bad samples instead of failing")
    parser.add_argument("--no_cache", action="store_true", help="decode the source again, ignoring the cache")
    args = parser.parse_args(argv)
    try:
        start = time.perf_counter()
        dataset = load(args.data_dir, skip_bad=args.skip_bad, use_cache=not args.no_cache)
        seconds = time.perf_counter() - start
    except DataError as e:
        print(f"error: {e}")
        return 1
    print(f"FER2013 from {dataset.source}")
    print(format_counts(dataset))
    print(f"loaded in {seconds:.2f} s")
    if dataset.skipped:
        print(f"skipped {len(dataset.skipped)} bad sample(s): see the log above")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
