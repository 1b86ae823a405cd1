"""Training state, loss and the pure train / eval steps.

The programmatic API::

    state = create_train_state(rng, model, config, mean_image=mean, steps_per_epoch=n)
    step = jax.jit(functools.partial(train_step, config=config), donate_argnums=0)
    for i, batch in enumerate(data.batches(train, config.batch_size, shuffle_seed=epoch)):
        state, metrics = step(state, batch, jax.random.fold_in(loop_key, i))
    totals = eval_step(evaluation_state(state), batch)

Nothing here has side effects: the training-set mean face, the class weights and the
weights' moving average (`config.ema`) live in the state (and so in every checkpoint);
dropout and augmentation keys come from `rng`.
The training loop that drives these functions is `ferjax.loop`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from ferjax import data, preprocess
from ferjax.configs import Config


class TrainState(train_state.TrainState):
    batch_stats: Any
    mean_image: jax.Array  # training-set mean face in [0, 1], HxW: subtracted from every input
    class_weights: jax.Array  # per-class loss weights, [7]
    crop: int = flax.struct.field(pytree_node=False, default=0)  # the model's input window (0: the whole face)
    # {'params', 'batch_stats'} averaged over the steps (config.ema > 0), else None.
    averaged: Any = None


def evaluation_state(state: TrainState) -> TrainState:
    """The state to evaluate and predict with: its averaged weights in place where it keeps them."""
    if state.averaged is None:
        return state
    return state.replace(params=state.averaged["params"], batch_stats=state.averaged["batch_stats"], averaged=None)


def update_average(averaged: dict, variables: dict, step: jax.Array, decay: float) -> dict:
    """One step of the exponential moving average of `variables`.

    The decay ramps up as (1 + step) / (10 + step) towards `decay`, so the random initial
    weights are forgotten within the first few hundred steps.
    """
    step_decay = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
    return optax.incremental_update(variables, averaged, 1.0 - step_decay)


def class_weights(labels: np.ndarray, weighting: str) -> np.ndarray:
    """'none': all ones; 'balanced': N / (classes * count_c), so every class weighs the same in total."""
    if weighting == "none":
        return np.ones(data.NUM_CLASSES, np.float32)
    counts = np.bincount(labels, minlength=data.NUM_CLASSES).astype(np.float64)
    return (len(labels) / (data.NUM_CLASSES * np.maximum(counts, 1))).astype(np.float32)


def _is_kernel(path, _) -> bool:
    return getattr(path[-1], "key", None) == "kernel"


def kernel_mask(params) -> Any:
    """True for conv and dense kernels: what L2 and weight decay apply to (not biases, BN scales)."""
    return jax.tree_util.tree_map_with_path(_is_kernel, params)


def l2_penalty(params) -> jax.Array:
    """0.5 * sum of squared kernel weights: the paper's L2 regularisation term."""
    leaves = [p for p, is_k in zip(jax.tree.leaves(params), jax.tree.leaves(kernel_mask(params))) if is_k]
    return 0.5 * sum(jnp.sum(jnp.square(p.astype(jnp.float32))) for p in leaves)


def learning_rate_schedule(config: Config, steps_per_epoch: int) -> optax.Schedule:
    total = config.epochs * steps_per_epoch
    lr = config.learning_rate
    if config.schedule == "cosine":
        warmup = int(config.warmup_epochs * steps_per_epoch)
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total, warmup + 1), end_value=lr * 1e-3)
    if config.schedule == "onecycle":
        return optax.cosine_onecycle_schedule(total, lr)
    return optax.constant_schedule(lr)  # 'constant', and the base of 'plateau'


def make_optimizer(config: Config, steps_per_epoch: int) -> optax.GradientTransformationExtraArgs:
    """Adam / AdamW / SGD-Nesterov with the configured schedule, clipping and decay.

    The learning rate is injected as a hyperparameter so that it is logged and checkpointed.
    'plateau' scales it by `reduce_on_plateau`, fed the training loss averaged over an epoch.
    With `train_only`, the parameters outside those top-level parts get zero updates and no optimizer state.
    """
    schedule = learning_rate_schedule(config, steps_per_epoch)
    if config.optimizer == "adam":
        inner = optax.inject_hyperparams(optax.adam)(learning_rate=schedule)
    elif config.optimizer == "adamw":
        inner = optax.inject_hyperparams(optax.adamw, static_args=("mask",))(
            learning_rate=schedule, weight_decay=config.weight_decay, mask=kernel_mask
        )
    else:
        inner = optax.inject_hyperparams(optax.sgd)(learning_rate=schedule, momentum=config.momentum, nesterov=True)
        if config.weight_decay:
            inner = optax.chain(optax.add_decayed_weights(config.weight_decay, mask=kernel_mask), inner)
    parts = [optax.clip_by_global_norm(config.grad_clip)] if config.grad_clip else []
    parts.append(inner)
    if config.schedule == "plateau":
        parts.append(optax.contrib.reduce_on_plateau(
            factor=config.plateau_factor, patience=config.plateau_patience, accumulation_size=steps_per_epoch))
    tx = optax.chain(*parts)
    if config.train_only:
        def labels(params):
            return jax.tree_util.tree_map_with_path(
                lambda path, _: "train" if path[0].key in config.train_only else "fixed", params)

        tx = optax.partition({"train": tx, "fixed": optax.set_to_zero()}, labels)
    return tx


def current_learning_rate(opt_state) -> jax.Array:
    """The learning rate the last update used (schedule times any plateau scale)."""
    lr, scale = None, jnp.float32(1.0)
    for s in jax.tree.leaves(opt_state, is_leaf=lambda x: hasattr(x, "hyperparams") or hasattr(x, "scale")):
        if hasattr(s, "hyperparams"):
            lr = s.hyperparams["learning_rate"]
        elif hasattr(s, "scale"):
            scale = s.scale
    return lr * scale


def create_train_state(rng: jax.Array, model: nn.Module, config: Config, *, mean_image: np.ndarray,
                       steps_per_epoch: int, weights: np.ndarray | None = None,
                       hog_dim: int | None = None) -> TrainState:
    """Initialises parameters, batch-norm statistics and the optimizer.

    Args:
      rng: the init key.
      model: from `ferjax.models.create`.
      config: the training config (optimizer, schedule, ...).
      mean_image: training-set mean face in [0, 1], HxW.
      steps_per_epoch: for the schedules.
      weights: per-class loss weights (default: ones).
      hog_dim: length of the HOG vector, for models that take one.
    """
    size = config.crop or mean_image.shape[0]
    inputs = {"hog": jnp.zeros((1, hog_dim))} if model.needs_hog else {}
    variables = model.init({"params": rng, "dropout": rng}, jnp.zeros((1, size, size, 1)), train=False, **inputs)
    variables = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        tx=make_optimizer(config, steps_per_epoch),
        mean_image=jnp.asarray(mean_image, jnp.float32),
        class_weights=jnp.asarray(np.ones(data.NUM_CLASSES) if weights is None else weights, jnp.float32),
        crop=config.crop,
        # A copy: the train step donates its state, and one buffer cannot be donated twice.
        averaged=jax.tree.map(jnp.copy, variables) if config.ema else None,
    )


def transplant(state: TrainState, source: TrainState) -> tuple[TrainState, list[str]]:
    """`state` with every parameter and batch statistic of `source` copied in at the same path.

    What `state` holds beyond `source` (a localisation net put in front of a trained trunk) keeps
    its own values; their paths are returned. The optimizer state is left as it is: a warm start
    begins a new schedule.

    Raises:
      ValueError: naming a `source` array that `state` lacks or holds at another shape.
    """
    merged, fresh = {}, []
    for collection in ("params", "batch_stats"):
        ours = flax.traverse_util.flatten_dict(getattr(state, collection), sep="/")
        theirs = flax.traverse_util.flatten_dict(getattr(source, collection), sep="/")
        for path, array in theirs.items():
            if path not in ours:
                raise ValueError(f"{collection}/{path} has no place in this model")
            if array.shape != ours[path].shape:
                raise ValueError(f"{collection}/{path} has shape {array.shape}, this model's {ours[path].shape}")
        fresh += [f"{collection}/{path}" for path in ours if path not in theirs]
        merged[collection] = flax.traverse_util.unflatten_dict(
            {path: jnp.asarray(theirs.get(path, array), array.dtype) for path, array in ours.items()}, sep="/")
    averaged = jax.tree.map(jnp.copy, merged) if state.averaged is not None else None
    return state.replace(**merged, averaged=averaged), sorted(fresh)


def model_inputs(state: TrainState, images_BxHxW: jax.Array, per_image_standardize: bool,
                 crop_at: tuple[int, int] | jax.Array | None = None) -> jax.Array:
    """uint8 (or [0, 255] float) faces -> normalised BxHxWx1 model input.

    A model trained on crops (`state.crop`) gets the window at `crop_at` ((row, column) of its
    top-left corner, one pair or one per image), by default the centre one. Normalisation comes
    first, so the training mean is subtracted where each pixel was.
    """
    x = preprocess.normalize(images_BxHxW, state.mean_image, per_image_standardize)
    if state.crop:
        batch, height, width = x.shape
        if crop_at is None:
            crop_at = preprocess.centre_offset(height, width, state.crop)
        x = preprocess.crop(x, state.crop, jnp.broadcast_to(jnp.asarray(crop_at, jnp.int32), (batch, 2)))
    return x[..., None]


def _hog_input(batch: dict, flipped_B: jax.Array | None) -> dict:
    if "hog" not in batch:
        return {}
    if flipped_B is None:
        return {"hog": batch["hog"]}
    return {"hog": jnp.where(flipped_B[:, None], batch["hog_flipped"], batch["hog"])}


def _augment_config(config: Config) -> preprocess.Augment:
    return preprocess.Augment(config.flip, config.shift, config.subpixel_shift, config.rotate, config.scale,
                              config.erase)


def weighted_cross_entropy(logits_BxK, targets_BxK, weights_B, label_smoothing: float) -> jax.Array:
    """Mean cross-entropy against target distributions (one-hot labels, or mixup's blends), smoothed by
    `label_smoothing`, over the samples with non-zero weight (weights: mask x class weight)."""
    targets = optax.smooth_labels(targets_BxK, label_smoothing)
    per_sample = optax.softmax_cross_entropy(logits_BxK, targets)
    return jnp.sum(per_sample * weights_B) / jnp.maximum(jnp.sum(weights_B), 1e-9)


def _training_view(state: TrainState, faces_BxHxW: jax.Array, config: Config, crop_at,
                   erased_BxHxW: jax.Array | None) -> jax.Array:
    """The model input of augmented faces: normalised, cropped at `crop_at`, then zero (the mean face) where
    `erased_BxHxW` (random erasing's rectangles in the window)."""
    x = model_inputs(state, faces_BxHxW, config.standardize, crop_at)
    if erased_BxHxW is None:
        return x
    return jnp.where(erased_BxHxW[..., None], 0.0, x)


def _mirrored_view(faces_BxHxW: jax.Array, crop_at, erased_BxHxW: jax.Array | None, crop: int):
    """(faces, crop_at, erased) of the mirror image: the window and the erased rectangle mirror with the face.

    The training mean is subtracted after mirroring, as in flip test-time augmentation."""
    if crop_at is not None:
        crop_at = crop_at.at[:, 1].set(faces_BxHxW.shape[2] - crop - crop_at[:, 1])
    erased_BxHxW = None if erased_BxHxW is None else erased_BxHxW[:, :, ::-1]
    return faces_BxHxW[:, :, ::-1], crop_at, erased_BxHxW


def distillation_loss(logits_BxK, teacher_probs_BxK, weights_B, temperature: float) -> jax.Array:
    """T^2 * KL(teacher || student) of the temperature-T softmaxes, the weighted mean over samples.

    The T^2 keeps the term's gradient on the scale of the labels' cross-entropy (Hinton et al., 2015).
    """
    per_sample = optax.kl_divergence(jax.nn.log_softmax(logits_BxK / temperature), teacher_probs_BxK)
    return temperature**2 * jnp.sum(per_sample * weights_B) / jnp.maximum(jnp.sum(weights_B), 1e-9)


def alignment_loss(theta_Bx2x3, applied_Bx2x3, weights_B) -> jax.Array:
    """Squared distance of theta's linear part from the inverse of the augmentation's, the weighted mean.

    The augmentation turned and zoomed each face by applied_Bx2x3's linear part; a transformer that
    undoes it samples through the inverse. Translations are left out: the random crop moves the
    centre they turn about. In normalised coordinates the linear part is the same for the 48x48 face
    and any square window of it.
    """
    target_Bx2x2 = jnp.linalg.inv(applied_Bx2x3[:, :, :2])
    per_sample = jnp.sum((theta_Bx2x3[:, :, :2] - target_Bx2x2) ** 2, axis=(1, 2))
    return jnp.sum(per_sample * weights_B) / jnp.maximum(jnp.sum(weights_B), 1e-9)


def teacher_probs(teachers: Sequence[TrainState], faces_BxHxW: jax.Array, crop_at, erased_BxHxW: jax.Array | None,
                  config: Config) -> jax.Array:
    """The teachers' mean temperature-softened class probabilities on the student's augmented view.

    Each teacher subtracts its own mean face and sees the student's window (`crop_at`) with the same
    erased rectangle; with config.distill_flip, its probabilities on the mirror image join the mean
    (flip test-time augmentation of the targets). No gradient flows into the teachers.
    """
    views = [(faces_BxHxW, crop_at, erased_BxHxW)]
    if config.distill_flip:
        views.append(_mirrored_view(faces_BxHxW, crop_at, erased_BxHxW, config.crop))
    probs = []
    for teacher in teachers:
        for view_faces, view_crop_at, view_erased in views:
            x = _training_view(teacher, view_faces, config, view_crop_at, view_erased)
            (logits, _) = teacher.apply_fn({"params": teacher.params, "batch_stats": teacher.batch_stats}, x,
                                           train=False)
            probs.append(jax.nn.softmax(logits / config.distill_temperature))
    return jax.lax.stop_gradient(jnp.mean(jnp.stack(probs), 0))


def sharpness_aware_gradient(grad_fn, params, direction, rho: float):
    """`grad_fn` at params + rho * direction / |direction|: sharpness-aware minimisation's gradient
    (Foret et al., 2021) where `direction` is the gradient at `params`.

    Taken at the nearby weights where the loss rises fastest, it steers towards minima whose whole
    neighbourhood has a low loss (flat ones), which tend to generalise better.
    """
    norm = jnp.sqrt(sum(jnp.sum(jnp.square(d)) for d in jax.tree.leaves(direction)))
    return grad_fn(jax.tree.map(lambda p, d: p + rho * d / (norm + 1e-12), params, direction))


def train_step(state: TrainState, batch: dict, rng: jax.Array, teachers: Sequence[TrainState] = (), *,
               config: Config) -> tuple[TrainState, dict]:
    """One optimisation step on a batch {'image': uint8 BxHxW, 'label', 'mask'[, 'hog', 'hog_flipped']}.

    Loss = weighted cross-entropy + config.l2 * 0.5 * sum(kernel^2). With config.mixup, faces and
    their labels are blended in pairs (`preprocess.mixup`) after the geometric augmentation. With
    `teachers` (evaluation states, from `loop.load_teachers`), which see the same blends, the
    cross-entropy weighs 1 - config.distill_weight and `distillation_loss` against their mean
    prediction the rest. config.align_weight adds that times `alignment_loss` of the spatial
    transformer's theta. With config.train_only, only those top-level parts change, batch-norm
    statistics included. With config.sam_rho, the update follows `sharpness_aware_gradient` (same
    batch, augmentation and dropout; the metrics and batch-norm statistics are those of the first
    pass). With config.ema, the new weights also join their moving average. Returns the new state
    and device-scalar metrics (loss, cross_entropy, accuracy, learning_rate).
    """
    k_aug, k_crop, k_erase, k_dropout = jax.random.split(rng, 4)
    aug = _augment_config(config)
    faces, flipped_B, applied_Bx2x3 = preprocess.augment(k_aug, batch["image"].astype(jnp.float32), aug)
    crop_at = preprocess.random_crop_offsets(k_crop, *faces.shape, state.crop) if state.crop else None
    window_hw = (state.crop, state.crop) if state.crop else faces.shape[1:]
    erased = preprocess.erase_mask(k_erase, faces.shape[0], *window_hw, aug.erase) if aug.erase else None
    targets_BxK = jax.nn.one_hot(batch["label"], data.NUM_CLASSES)
    if config.mixup:  # a key folded in, not a fifth split: the other keys stay those of runs without mixup
        faces, partner_B, lam_B = preprocess.mixup(jax.random.fold_in(rng, 1), faces, config.mixup)
        targets_BxK = lam_B[:, None] * targets_BxK + (1 - lam_B[:, None]) * targets_BxK[partner_B]
    x = _training_view(state, faces, config, crop_at, erased)
    weights_B = batch["mask"] * jnp.sum(targets_BxK * state.class_weights[None], -1)  # a blend weighs as its classes do
    teacher_BxK = teacher_probs(teachers, faces, crop_at, erased, config) if teachers else None

    def loss_fn(params):
        (logits, aux), updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats}, x, train=True,
            rngs={"dropout": k_dropout}, mutable=["batch_stats"], **_hog_input(batch, flipped_B))
        ce = weighted_cross_entropy(logits, targets_BxK, weights_B, config.label_smoothing)
        data_loss = ce
        if teacher_BxK is not None:
            distilled = distillation_loss(logits, teacher_BxK, weights_B, config.distill_temperature)
            data_loss = (1 - config.distill_weight) * ce + config.distill_weight * distilled
        if config.align_weight:
            data_loss += config.align_weight * alignment_loss(aux["theta"], applied_Bx2x3, weights_B)
        return data_loss + config.l2 * l2_penalty(params), (ce, logits, updates)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (ce, logits, updates)), grads = grad_fn(state.params)
    if config.sam_rho:
        direction = grads
        if config.train_only:  # the fixed parts stay where they are
            direction = {part: g if part in config.train_only else jax.tree.map(jnp.zeros_like, g)
                         for part, g in grads.items()}
        grads = sharpness_aware_gradient(lambda p: grad_fn(p)[1], state.params, direction, config.sam_rho)
    param_updates, opt_state = state.tx.update(grads, state.opt_state, state.params, value=loss)
    batch_stats = updates["batch_stats"]
    if config.train_only:  # the fixed parts keep their statistics too, so they compute what they computed before
        batch_stats = {part: stats if part in config.train_only else state.batch_stats[part]
                       for part, stats in batch_stats.items()}
    variables = {"params": optax.apply_updates(state.params, param_updates), "batch_stats": batch_stats}
    averaged = state.averaged
    if config.ema:
        averaged = update_average(averaged, variables, state.step, config.ema)
    state = state.replace(step=state.step + 1, opt_state=opt_state, averaged=averaged, **variables)
    # Against a blend's larger part: the label itself without mixup.
    correct = jnp.sum((jnp.argmax(logits, -1) == jnp.argmax(targets_BxK, -1)) * batch["mask"])
    metrics = {
        "loss": loss,
        "cross_entropy": ce,
        "accuracy": correct / jnp.maximum(jnp.sum(batch["mask"]), 1),
        "learning_rate": current_learning_rate(opt_state),
    }
    return state, metrics


def predict_logits(state: TrainState, batch: dict, *, standardize: bool = False, flip: bool = False,
                   crop_at: tuple[int, int] | None = None) -> jax.Array:
    """Eval-mode logits of a batch; `flip` mirrors the faces and `crop_at` picks the window of a model
    trained on crops (both for test-time augmentation)."""
    images = batch["image"].astype(jnp.float32)
    if flip:
        images = images[:, :, ::-1]
    flipped_B = jnp.full(images.shape[:1], flip)
    (logits, _) = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                                 model_inputs(state, images, standardize, crop_at), train=False,
                                 **_hog_input(batch, flipped_B))
    return logits


TTA_MODES = ("none", "flip", "tencrop")


def check_tta(tta: str) -> None:
    """Raises ValueError, naming `tta`, unless it is one of TTA_MODES."""
    if tta not in TTA_MODES:
        raise ValueError(f"tta={tta!r}: choose one of {', '.join(TTA_MODES)}")


def tta_log_probs(state: TrainState, batch: dict, *, tta: str = "none", standardize: bool = False) -> jax.Array:
    """Log class probabilities of a batch, averaged over test-time augmentations (TTA_MODES).

    'flip' adds the mirrored face. 'tencrop' takes a model trained on crops (`state.crop`) through
    the five windows of its own size and their mirrors; a whole-face model gets 40/48 windows zoomed
    back to full size.
    """
    check_tta(tta)  # at trace time: an unknown mode must not fall through to ten-crop
    predict = functools.partial(predict_logits, state, standardize=standardize)
    if tta == "none":
        return jax.nn.log_softmax(predict(batch))
    if tta == "flip":
        logits = [predict(batch), predict(batch, flip=True)]
    elif state.crop:
        _, height, width = batch["image"].shape
        logits = [predict(batch, flip=flip, crop_at=offset)
                  for flip in (False, True) for offset in preprocess.five_crop_offsets(height, width, state.crop)]
    else:
        views = preprocess.zoomed_ten_crop(batch["image"].astype(jnp.float32), round(batch["image"].shape[1] * 40 / 48))
        logits = [predict({**batch, "image": view}) for view in views]
    return jnp.log(jnp.mean(jnp.stack([jax.nn.softmax(lg) for lg in logits]), 0))


def eval_step(state: TrainState, batch: dict, *, standardize: bool = False, tta: str = "none") -> dict:
    """Masked sums over a batch: loss_sum, correct, count and the 7x7 confusion matrix (rows: truth),
    of the predictions averaged over the test-time augmentations `tta`."""
    return confusion_sums(tta_log_probs(state, batch, tta=tta, standardize=standardize), batch["label"], batch["mask"])


def confusion_sums(logits_BxK: jax.Array, labels_B: jax.Array, mask_B: jax.Array) -> dict:
    """Sums that add up across batches and devices: every unmasked sample counts once."""
    num_classes = logits_BxK.shape[-1]
    per_sample = optax.softmax_cross_entropy_with_integer_labels(logits_BxK, labels_B)
    predicted = jnp.argmax(logits_BxK, -1)
    onehot_true = jax.nn.one_hot(labels_B, num_classes) * mask_B[:, None]
    onehot_pred = jax.nn.one_hot(predicted, num_classes)
    return {
        "loss_sum": jnp.sum(per_sample * mask_B),
        "correct": jnp.sum((predicted == labels_B) * mask_B),
        "count": jnp.sum(mask_B),
        "confusion": onehot_true.T @ onehot_pred,
    }
