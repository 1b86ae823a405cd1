"""What the network learned, as in the paper: feature maps, first-layer filters, attention, saliency.

Everything reads the model's own outputs: the activations it sows into 'intermediates', the
warped faces it returns in aux, and gradients of its logits; no forward pass is re-implemented.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from ferjax import data, plots, preprocess, train
from ferjax.models.stn import LOCALIZATION_NET

# Where translation_profile moves theta by default: quarter-pixel steps to one pixel either way.
QUARTER_PIXEL_OFFSETS = tuple(k / 4 for k in range(-4, 5))
# tilt_profile's default turns in degrees (positive: anticlockwise on screen, as preprocess.rotate turns).
TILT_DEGREES = (-30.0, -20.0, -10.0, 0.0, 10.0, 20.0, 30.0)
# zoom_profile's default magnifications (above 1: the face fills more of the image, as preprocess.zoom zooms).
ZOOM_FACTORS = (0.8, 0.9, 1.0, 1.1, 1.2)


def faces_per_class(split: data.Split, count: int, seed: int = 0) -> data.Split:
    """`count` faces of each class (fewer where a class has fewer), grouped by class."""
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(split.labels == c))[:count] for c in range(data.NUM_CLASSES)]
    return split.subset(np.concatenate(picks))


@functools.partial(jax.jit, static_argnames=("standardize", "capture"))
def _apply(state: train.TrainState, images_BxHxW, standardize: bool, hog=None, capture: str | None = None):
    """The model's (logits, aux), and with `capture` also the variables it sowed into that collection (jitted:
    the model runs as one compiled program per input shape, not op by op)."""
    kwargs = {"hog": hog} if hog is not None else {}
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    x = train.model_inputs(state, jnp.asarray(images_BxHxW, jnp.float32), standardize)
    if capture:
        return state.apply_fn(variables, x, train=False, mutable=[capture], **kwargs)
    return state.apply_fn(variables, x, train=False, **kwargs)


def feature_maps(state: train.TrainState, images_BxHxW, standardize: bool = False, hog=None) -> dict[str, np.ndarray]:
    """Activations of every conv layer, name -> BxHxWxC, in network order."""
    _, captured = _apply(state, images_BxHxW, standardize, hog, capture="intermediates")
    maps = {}
    for path, value in jax.tree_util.tree_flatten_with_path(captured["intermediates"])[0]:
        name = "/".join(str(getattr(k, "key", k)) for k in path[:-1])  # drop the sow tuple index
        maps[name] = np.asarray(value)
    return maps


def first_layer_filters(params) -> tuple[str, np.ndarray]:
    """The first conv kernel that sees the image (the feature extractor's, not the localisation net's)."""
    kernels = [(("/".join(str(getattr(k, "key", k)) for k in path)), np.asarray(leaf))
               for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
               if getattr(path[-1], "key", None) == "kernel" and leaf.ndim == 4 and leaf.shape[2] == 1]
    kernels.sort(key=lambda item: LOCALIZATION_NET in item[0])
    name, kernel_HxWx1xC = kernels[0]
    return name, np.moveaxis(kernel_HxWx1xC[:, :, 0, :], -1, 0)


def saliency(state: train.TrainState, images_BxHxW, labels_B, standardize: bool = False, hog=None) -> np.ndarray:
    """|d logit_true / d pixel| per face (gradient saliency), BxHxW."""
    def true_logit_sum(images):
        logits, _ = _apply(state, images, standardize, hog)
        return jnp.sum(jnp.take_along_axis(logits, jnp.asarray(labels_B)[:, None], axis=1))

    return np.abs(np.asarray(jax.grad(true_logit_sum)(jnp.asarray(images_BxHxW, jnp.float32))))


def has_attention(state: train.TrainState) -> bool:
    """Whether the model has a spatial transformer."""
    return LOCALIZATION_NET in state.params


def _split_outputs(state: train.TrainState, images_NxHxW, standardize: bool, hog, batch_size: int) -> dict:
    """Every face's class probabilities ('probs') and, for an attention model, its theta ('theta', float64) and
    localisation hidden units ('hidden') and the warped map's (height, width) ('warped_hw').

    One pass in chunks of batch_size; the last chunk is filled up with faces from the start, so the pass
    compiles for one shape.
    """
    n = len(images_NxHxW)
    chunks = {"probs": [], "theta": [], "hidden": []}
    for start in range(0, n, batch_size):
        index = np.arange(start, start + batch_size) % n
        real = slice(0, min(batch_size, n - start))
        (logits, aux), sown = _apply(state, images_NxHxW[index], standardize, None if hog is None else hog[index],
                                     capture="attention")
        chunks["probs"].append(np.asarray(jax.nn.softmax(logits))[real])
        if "theta" in aux:
            chunks["theta"].append(np.asarray(aux["theta"], np.float64)[real])
            chunks["hidden"].append(np.asarray(jax.tree.leaves(sown["attention"])[0])[real])
    outputs = {name: np.concatenate(values) for name, values in chunks.items() if values}
    if "theta" in outputs:
        outputs["warped_hw"] = aux["warped"].shape[1:3]
    return outputs


def _scores(probs_NxK: np.ndarray, labels_N: np.ndarray) -> tuple[float, float]:
    """Accuracy and mean cross-entropy."""
    return (float(np.mean(probs_NxK.argmax(-1) == labels_N)),
            float(-np.mean(np.log(probs_NxK[np.arange(len(labels_N)), labels_N]))))


def attention_statistics(state: train.TrainState, images_NxHxW, standardize: bool = False, hog=None,
                         batch_size: int = 500) -> dict | None:
    """How the spatial transformer warps these faces; None for a model without one.

    theta maps each output pixel's normalised coordinates (-1 to 1 across the map) to the point it
    samples, so |det| of its 2x2 part is the sampled area as a fraction of the map (below 1: a zoom
    in), and its last column times half the map size is the shift in pixels. A unit of the
    localisation net's hidden layer is live if it fires for at least one face; with none live,
    theta is one constant warp whatever the face.
    """
    if not has_attention(state):
        return None
    outputs = _split_outputs(state, images_NxHxW, standardize, hog, batch_size)
    theta_Nx2x3, hidden_NxU, (height, width) = outputs["theta"], outputs["hidden"], outputs["warped_hw"]
    area_N = np.abs(np.linalg.det(theta_Nx2x3[:, :, :2]))
    shift_Nx2 = theta_Nx2x3[:, :, 2] * np.array([width, height]) / 2  # (x, y) in pixels of the warped map
    return {
        "faces": len(theta_Nx2x3),
        "area_scale": {"min": float(area_N.min()), "mean": float(area_N.mean()), "max": float(area_N.max())},
        "shift_px": {"mean": shift_Nx2.mean(0).tolist(), "std": shift_Nx2.std(0).tolist()},
        # The largest standard deviation between faces of any entry of theta.
        "theta_std": float(theta_Nx2x3.std(0).max()),
        "live_units": int(np.sum(hidden_NxU.max(0) > 0)),
        "units": hidden_NxU.shape[1],
    }


def _with_translation(params: dict, axis: int, offset: float) -> dict:
    """params with `offset` (normalised coordinates) added to theta's translation along x (0) or y (1)."""
    loc = params[LOCALIZATION_NET]
    bias = loc["theta"]["bias"].at[3 * axis + 2].add(offset)  # theta is stored row-major: [a, b, tx, c, d, ty]
    return {**params, LOCALIZATION_NET: {**loc, "theta": {**loc["theta"], "bias": bias}}}


def translation_profile(state: train.TrainState, split: data.Split, standardize: bool = False, hog=None,
                        offsets_px=QUARTER_PIXEL_OFFSETS, batch_size: int = 500) -> dict | None:
    """Accuracy and mean cross-entropy of `split` with theta's translation moved by each offset, along x and y.

    An offset of +1 px makes every output pixel sample the point one pixel of the warped map to the right
    of (x) or below (y) the one the localisation net chose. Whether the learned warp is a local optimum of
    the loss, and how much a sub-pixel move (which blurs the face) costs, can be read off the two curves.
    None for a model without attention.
    """
    if not has_attention(state):
        return None
    # The warped map's size from the shapes alone: no face need go through the model for it.
    (_, aux) = jax.eval_shape(functools.partial(_apply, standardize=standardize), state, split.images[:1],
                              hog=None if hog is None else hog[:1])
    height, width = aux["warped"].shape[1:3]
    profile = {"faces": len(split), "offsets_px": [float(o) for o in offsets_px]}
    for axis, (name, size) in enumerate((("x", width), ("y", height))):
        scores = []
        for offset in offsets_px:
            moved = state.replace(params=_with_translation(state.params, axis, 2.0 * offset / size))
            scores.append(_scores(_split_outputs(moved, split.images, standardize, hog, batch_size)["probs"],
                                  split.labels))
        profile[name] = {"accuracy": [a for a, _ in scores], "loss": [loss for _, loss in scores]}
    return profile


def _warp_profile(state: train.TrainState, split: data.Split, standardize: bool, hog_of, warp, settings,
                  batch_size: int, axis: str, answer_key: str, answer_of) -> dict:
    """Accuracy and mean cross-entropy of `split` with its faces through warp(images, setting) for each
    setting (listed under `axis`), and for an attention model the mean and standard deviation over the
    faces of answer_of(theta_Nx2x3) under `answer_key`."""
    attention = has_attention(state)
    profile = {"faces": len(split), axis: [float(x) for x in settings], "accuracy": [], "loss": []}
    if attention:
        profile[answer_key] = {"mean": [], "std": []}
    for setting in settings:
        images = warp(split.images, setting)
        outputs = _split_outputs(state, images, standardize, None if hog_of is None else hog_of(images), batch_size)
        accuracy, loss = _scores(outputs["probs"], split.labels)
        profile["accuracy"].append(accuracy)
        profile["loss"].append(loss)
        if attention:
            answer_N = answer_of(outputs["theta"])
            profile[answer_key]["mean"].append(float(answer_N.mean()))
            profile[answer_key]["std"].append(float(answer_N.std()))
    return profile


def tilt_profile(state: train.TrainState, split: data.Split, standardize: bool = False, hog_of=None,
                 degrees=TILT_DEGREES, batch_size: int = 500) -> dict:
    """Accuracy and mean cross-entropy of `split` with every face turned by each angle (`preprocess.rotate`).

    For a model with attention also the rotation its theta answers with, mean and standard deviation over
    the faces in degrees: a transformer that undoes tilt answers -angle (a slope of -1 against the tilt),
    one blind to it the same angle whatever the tilt. `hog_of(images)` gives a HOG model its features
    of the turned faces.
    """
    def theta_degrees(theta_Nx2x3):
        return np.degrees(np.arctan2(theta_Nx2x3[:, 1, 0], theta_Nx2x3[:, 0, 0]))

    return _warp_profile(state, split, standardize, hog_of, preprocess.rotate, degrees, batch_size,
                         "degrees", "theta_degrees", theta_degrees)


def zoom_profile(state: train.TrainState, split: data.Split, standardize: bool = False, hog_of=None,
                 factors=ZOOM_FACTORS, batch_size: int = 500) -> dict:
    """Accuracy and mean cross-entropy of `split` with every face magnified by each factor (`preprocess.zoom`).

    For a model with attention also the magnification its theta answers with (1 / sqrt|det| of its 2x2
    part), mean and standard deviation over the faces: a transformer that undoes the zoom answers
    1 / factor, one blind to it the same whatever the factor.
    """
    def theta_zoom(theta_Nx2x3):
        return 1.0 / np.sqrt(np.abs(np.linalg.det(theta_Nx2x3[:, :, :2])))

    return _warp_profile(state, split, standardize, hog_of, preprocess.zoom, factors, batch_size,
                         "zooms", "theta_zoom", theta_zoom)


def _save(fig, path: str) -> str:
    plots.save_rgb(path, plots.figure_to_rgb(fig))
    return path


def write_all(state: train.TrainState, faces: data.Split, output_dir: str, *, standardize: bool = False,
              hog=None, channels: int = 8) -> list[str]:
    """Writes every visualisation PNG for `faces` into output_dir; returns the paths."""
    os.makedirs(output_dir, exist_ok=True)
    written = []
    names = [data.CLASS_NAMES[label] for label in faces.labels]

    for layer, maps in feature_maps(state, faces.images, standardize, hog).items():
        shown = min(channels, maps.shape[-1])
        fig, axes = plt.subplots(len(faces), shown + 1, figsize=(1.2 * (shown + 1), 1.2 * len(faces)), squeeze=False)
        for i in range(len(faces)):
            axes[i, 0].imshow(faces.images[i], cmap="gray")
            axes[i, 0].set_ylabel(names[i], fontsize=7)
            for c in range(shown):
                axes[i, c + 1].imshow(maps[i, :, :, c], cmap="viridis")
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle(f"feature maps of {layer} (first {shown} channels)")
        written.append(_save(fig, os.path.join(output_dir, f"feature_maps_{layer.replace('/', '_')}.png")))

    layer, filters = first_layer_filters(state.params)
    fig, ax = plt.subplots(figsize=(8, 2 + len(filters) // 16))
    ax.imshow(plots.image_grid(filters, columns=16), cmap="gray")
    ax.set_axis_off()
    ax.set_title(f"first-layer filters ({layer})")
    written.append(_save(fig, os.path.join(output_dir, "first_layer_filters.png")))

    _, aux = _apply(state, faces.images, standardize, hog)
    if "warped" in aux and aux["warped"].shape[1:3] == faces.images.shape[1:3]:
        fig, axes = plt.subplots(2, len(faces), figsize=(1.2 * len(faces), 2.8), squeeze=False)
        for i in range(len(faces)):
            axes[0, i].imshow(faces.images[i], cmap="gray")
            axes[1, i].imshow(np.asarray(aux["warped"][i, :, :, 0]), cmap="gray")
            axes[0, i].set_title(names[i], fontsize=7)
        for ax in axes.flat:
            ax.set_axis_off()
        fig.suptitle("input (top) and what the spatial transformer attends to (bottom)")
        written.append(_save(fig, os.path.join(output_dir, "attention.png")))

    maps = saliency(state, faces.images, faces.labels, standardize, hog)
    classes = [c for c in range(data.NUM_CLASSES) if np.any(faces.labels == c)]
    fig, axes = plt.subplots(2, len(classes), figsize=(1.6 * len(classes), 3.4), squeeze=False)
    for j, c in enumerate(classes):
        members = faces.labels == c
        axes[0, j].imshow(faces.images[members].mean(0), cmap="gray")
        axes[0, j].set_title(data.CLASS_NAMES[c], fontsize=8)
        axes[1, j].imshow(faces.images[members].mean(0), cmap="gray")
        axes[1, j].imshow(maps[members].mean(0), cmap="jet", alpha=0.5)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.suptitle("gradient saliency of the true class: which face regions drive each emotion")
    written.append(_save(fig, os.path.join(output_dir, "saliency.png")))
    return written
