"""Matplotlib figures (history, confusion matrix, image grids) as PNG files or RGB arrays."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ferjax import data  # noqa: E402


def figure_to_rgb(fig) -> np.ndarray:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def save_rgb(path: str, rgb: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(rgb).save(path)


def history_figure(history: list[dict]):
    """Loss and accuracy per epoch, train and val."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val"):
        ax_loss.plot(epochs, [h[f"{split}_loss"] for h in history], label=split)
        ax_acc.plot(epochs, [h[f"{split}_accuracy"] for h in history], label=split)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def confusion_figure(confusion_KxK, title: str = "confusion matrix"):
    """Row-normalised confusion matrix with counts."""
    confusion = np.asarray(confusion_KxK, np.float64)
    rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6, 5.5))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    names = data.CLASS_NAMES
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{int(confusion[i, j])}\n{rates[i, j]:.0%}", ha="center", va="center", fontsize=7,
                    color="white" if rates[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return fig


def image_grid(images_NxHxW: np.ndarray, columns: int = 8) -> np.ndarray:
    """Tiles images (any range, each rescaled to 0-255) into one uint8 grid with 2 px gaps."""
    images = np.asarray(images_NxHxW, np.float32)
    lo = images.min(axis=(1, 2), keepdims=True)
    hi = images.max(axis=(1, 2), keepdims=True)
    images = (images - lo) / np.maximum(hi - lo, 1e-6) * 255
    n, height, width = images.shape
    rows = -(-n // columns)
    grid = np.zeros((rows * (height + 2), columns * (width + 2)), np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * (height + 2):r * (height + 2) + height, c * (width + 2):c * (width + 2) + width] = image
    return grid
