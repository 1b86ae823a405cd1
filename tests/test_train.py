"""The pure train / eval steps, the loss, optimizers and schedules, on tiny models and real faces."""

import dataclasses
import functools
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ferjax import configs, data, evaluate, host_memory, models, preprocess, train


def _state(config, split, steps_per_epoch=10):
    model = models.create(config.model, **config.model_kwargs())
    return train.create_train_state(jax.random.key(config.seed), model, config,
                                    mean_image=preprocess.training_mean(split.images), steps_per_epoch=steps_per_epoch)


def _batch(split, n):
    return next(data.batches(split, n))


def test_l2_penalty_counts_kernels_only():
    params = {"conv": {"kernel": jnp.array([1.0, 2.0]), "bias": jnp.array([5.0])},
              "bn": {"scale": jnp.array([3.0]), "bias": jnp.array([1.0])},
              "dense": {"kernel": jnp.array([[2.0]])}}
    assert float(train.l2_penalty(params)) == pytest.approx(0.5 * (1 + 4 + 4))


def test_weighted_cross_entropy_by_hand():
    logits = jnp.log(jnp.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]))
    targets = jax.nn.one_hot(jnp.array([0, 1, 2]), 3)
    weights = jnp.array([1.0, 3.0, 0.0])  # the last sample is padding
    expected = (-np.log(0.5) - 3 * np.log(0.8)) / 4
    assert float(train.weighted_cross_entropy(logits, targets, weights, 0.0)) == pytest.approx(expected, rel=1e-5)
    smoothed = train.weighted_cross_entropy(logits, targets, jnp.array([1.0, 0, 0]), 0.3)
    # Smoothing 0.3 over 3 classes: targets (0.8, 0.1, 0.1).
    assert float(smoothed) == pytest.approx(-(0.8 * np.log(0.5) + 0.2 * np.log(0.25)), rel=1e-5)


def test_balanced_class_weights_by_hand():
    labels = np.array([0, 0, 0, 1] + [2, 3, 4, 5, 6] * 2)
    weights = train.class_weights(labels, "balanced")
    assert weights[0] == pytest.approx(14 / (7 * 3)) and weights[1] == pytest.approx(14 / 7)
    np.testing.assert_array_equal(train.class_weights(labels, "none"), np.ones(7))


def test_confusion_sums_and_metrics_by_hand():
    logits = 5.0 * jax.nn.one_hot(jnp.array([0, 1, 0, 2]), 7)
    labels = jnp.array([0, 0, 0, 3])
    mask = jnp.array([1.0, 1.0, 1.0, 0.0])
    sums = train.confusion_sums(logits, labels, mask)
    assert float(sums["correct"]) == 2 and float(sums["count"]) == 3
    confusion = np.asarray(sums["confusion"])
    assert confusion[0, 0] == 2 and confusion[0, 1] == 1 and confusion.sum() == 3
    metrics = evaluate.metrics_from_confusion(confusion)
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["per_class_accuracy"]["angry"] == pytest.approx(2 / 3)
    # F1 angry: precision 1, recall 2/3 -> 0.8; disgust: precision 0 -> 0; others 0. Macro over 7 classes.
    assert metrics["macro_f1"] == pytest.approx(0.8 / 7)


def test_step_increments_and_lowers_the_loss_on_a_fixed_batch(small_fer2013):
    config = configs.tiny_config(dropout=0.0, flip=False, learning_rate=3e-3)
    state = _state(config, small_fer2013.train)
    batch = _batch(small_fer2013.train, 32)
    step = jax.jit(functools.partial(train.train_step, config=config))
    losses = []
    for i in range(8):
        state, metrics = step(state, batch, jax.random.key(i))
        losses.append(float(metrics["loss"]))
    assert int(state.step) == 8
    assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(state.params))
    assert losses[-1] < losses[0] - 0.1


def test_same_rng_gives_bit_identical_results(small_fer2013):
    config = configs.tiny_config(shift=2, erase=0.5)
    batch = _batch(small_fer2013.train, 16)

    def run():
        state = _state(config, small_fer2013.train)
        step = jax.jit(functools.partial(train.train_step, config=config))
        for i in range(3):
            state, metrics = step(state, batch, jax.random.key(i))
        return state, metrics

    (a, ma), (b, mb) = run(), run()
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(x, y)
    assert float(ma["loss"]) == float(mb["loss"])


def test_small_model_overfits_64_real_faces(small_fer2013):
    faces = data.stratified_subset(small_fer2013.train, 64)
    config = configs.tiny_config(model="_tiny_cnn", dropout=0.0, flip=False, l2=0.0, learning_rate=1e-2,
                                 batch_size=64)
    state = _state(config, faces)
    batch = _batch(faces, 64)
    step = jax.jit(functools.partial(train.train_step, config=config), donate_argnums=0)
    for i in range(80):
        state, _ = step(state, batch, jax.random.key(i))
    totals = jax.jit(train.eval_step)(state, batch)
    assert float(totals["correct"]) == 64


@pytest.mark.parametrize("optimizer", configs.OPTIMIZERS)
@pytest.mark.parametrize("schedule", configs.SCHEDULES)
def test_every_optimizer_and_schedule_steps(optimizer, schedule, small_fer2013):
    config = configs.tiny_config(optimizer=optimizer, schedule=schedule, weight_decay=1e-4, grad_clip=1.0,
                                 epochs=2, warmup_epochs=0.5)
    tx = train.make_optimizer(config, steps_per_epoch=4)
    params = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}
    opt_state = tx.init(params)
    for _ in range(2):  # the cosine warm-up starts at 0
        updates, opt_state = tx.update(jax.tree.map(jnp.ones_like, params), opt_state, params, value=jnp.float32(1))
    assert np.all(np.asarray(updates["dense"]["kernel"]) < 0)
    assert float(train.current_learning_rate(opt_state)) > 0


def test_schedules_shape_the_learning_rate():
    cosine = train.learning_rate_schedule(configs.tiny_config(schedule="cosine", epochs=10, warmup_epochs=1), 10)
    assert float(cosine(0)) == 0 and float(cosine(10)) == pytest.approx(1e-3) and float(cosine(100)) < 1e-5
    onecycle = train.learning_rate_schedule(configs.tiny_config(schedule="onecycle", epochs=10), 10)
    assert float(onecycle(0)) < float(onecycle(30)) and float(onecycle(99)) < float(onecycle(30))


def test_plateau_lowers_the_learning_rate_when_the_loss_stalls():
    config = configs.tiny_config(schedule="plateau", plateau_patience=1, plateau_factor=0.5, epochs=10)
    tx = train.make_optimizer(config, steps_per_epoch=2)
    params = {"kernel": jnp.ones(3)}
    opt_state = tx.init(params)
    for _ in range(8):  # four "epochs" of a constant loss
        _, opt_state = tx.update({"kernel": jnp.ones(3)}, opt_state, params, value=jnp.float32(1.0))
    assert float(train.current_learning_rate(opt_state)) < config.learning_rate


def test_hog_model_follows_the_flip(small_fer2013):
    config = configs.tiny_config(model="_tiny_hog")
    faces = small_fer2013.train
    extra = {"hog": np.random.default_rng(0).normal(size=(len(faces), 900)).astype(np.float32)}
    extra["hog_flipped"] = -extra["hog"]
    model = models.create(config.model)
    state = train.create_train_state(jax.random.key(0), model, config,
                                     mean_image=preprocess.training_mean(faces.images), steps_per_epoch=4, hog_dim=900)
    batch = next(data.batches(faces, 8, extra=extra))
    state, metrics = jax.jit(functools.partial(train.train_step, config=config))(state, batch, jax.random.key(0))
    assert np.isfinite(float(metrics["loss"]))
    straight = train.predict_logits(state, batch)
    mirrored = train.predict_logits(state, {**batch, "hog": batch["hog_flipped"]}, flip=True)
    np.testing.assert_allclose(mirrored, train.predict_logits(state, batch, flip=True), atol=1e-5)
    assert not np.allclose(straight, mirrored)


def test_weight_average_by_hand():
    averaged, variables = {"w": jnp.array([0.0])}, {"w": jnp.array([1.0])}
    def average_at(step):
        return float(train.update_average(averaged, variables, jnp.array(step), 0.999)["w"][0])

    assert average_at(0) == pytest.approx(0.9)  # the ramp's decay (1 + 0) / (10 + 0) = 0.1 < 0.999
    assert average_at(10**6) == pytest.approx(1e-3, rel=1e-4)  # late in training the configured decay rules
    with pytest.raises(configs.ConfigError, match="--ema=1.0: must be in"):
        configs.tiny_config(ema=1.0)


def test_train_step_averages_the_weights_that_evaluation_uses(small_fer2013):
    config = configs.tiny_config(ema=0.5)
    batch = _batch(small_fer2013.train, 16)
    state = _state(config, small_fer2013.train)
    assert train.evaluation_state(_state(configs.tiny_config(), small_fer2013.train)).averaged is None
    step = jax.jit(functools.partial(train.train_step, config=config), donate_argnums=0)
    previous = jax.tree.map(np.asarray, state.averaged)
    for i in range(3):
        state, _ = step(state, batch, jax.random.key(i))
        expected = train.update_average(previous, {"params": state.params, "batch_stats": state.batch_stats},
                                        jnp.array(i), 0.5)
        for x, y in zip(jax.tree.leaves(state.averaged), jax.tree.leaves(expected)):
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
        previous = jax.tree.map(np.asarray, state.averaged)
    evaluated = train.evaluation_state(state)
    for x, y in zip(jax.tree.leaves(evaluated.params), jax.tree.leaves(state.averaged["params"])):
        np.testing.assert_array_equal(x, y)
    assert not all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(evaluated.params),
                                                        jax.tree.leaves(state.params)))
    live = train.eval_step(state, batch)["loss_sum"]
    assert float(train.eval_step(evaluated, batch)["loss_sum"]) != float(live)


def test_distillation_loss_by_hand():
    student = jnp.log(jnp.array([[0.5, 0.25, 0.25], [0.2, 0.3, 0.5]]))
    teacher = jnp.array([[0.25, 0.5, 0.25], [0.2, 0.3, 0.5]])
    weights = jnp.array([2.0, 1.0])
    # KL(t || s) = sum t log(t / s): 0.25 log 0.5 + 0.5 log 2 for the first face, 0 for the second (equal).
    expected = 2 * (0.25 * np.log(0.5) + 0.5 * np.log(2.0)) / 3
    assert float(train.distillation_loss(student, teacher, weights, 1.0)) == pytest.approx(expected, rel=1e-5)
    # At temperature 2 the student's logits are halved: softmax(log(p) / 2) is sqrt(p), normalised.
    softened = np.sqrt([0.5, 0.25, 0.25]) / np.sqrt([0.5, 0.25, 0.25]).sum()
    kl = float(np.sum(np.array([0.25, 0.5, 0.25]) * np.log(np.array([0.25, 0.5, 0.25]) / softened)))
    only_first = train.distillation_loss(student, teacher, jnp.array([1.0, 0.0]), 2.0)
    assert float(only_first) == pytest.approx(4 * kl, rel=1e-5)


def test_distillation_weighs_the_teachers_against_the_labels(small_fer2013):
    batch = _batch(small_fer2013.train, 16)
    teacher = train.evaluation_state(_state(configs.tiny_config(seed=7), small_fer2013.train))
    relabelled = {**batch, "label": (batch["label"] + 1) % data.NUM_CLASSES}

    def step(config, batch, teachers):
        fn = jax.jit(functools.partial(train.train_step, config=config))
        return fn(_state(config, small_fer2013.train), batch, jax.random.key(0), teachers)

    config = configs.tiny_config(shift=2, erase=0.5, distill_weight=1.0)
    (a, ma), (b, mb) = step(config, batch, (teacher,)), step(config, relabelled, (teacher,))
    assert float(ma["loss"]) == pytest.approx(float(mb["loss"]), rel=1e-6)  # the labels play no part
    assert float(ma["cross_entropy"]) != float(mb["cross_entropy"])
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)

    config = configs.tiny_config(shift=2, erase=0.5, distill_weight=0.0)
    (c, mc), (d, md) = step(config, batch, (teacher,)), step(config, batch, ())
    assert float(mc["loss"]) == pytest.approx(float(md["loss"]), rel=1e-6)  # the teachers play no part
    for x, y in zip(jax.tree.leaves(c.params), jax.tree.leaves(d.params)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    with pytest.raises(configs.ConfigError, match="--distill_weight=1.5: must be in"):
        configs.tiny_config(distill_weight=1.5)


def test_flip_distillation_averages_the_teachers_flip_tta(small_fer2013):
    config = configs.tiny_config(crop=40, model="_tiny_cnn", distill_from=("t",), distill_flip=True,
                                 distill_temperature=2.0)
    teacher = train.evaluation_state(_state(config, small_fer2013.train))
    batch = _batch(small_fer2013.train, 16)
    faces = batch["image"].astype(jnp.float32)
    # Without erasing, the targets are the teacher's flip TTA (as evaluation does it) at the student's window.
    crop_at = jnp.broadcast_to(jnp.array([6, 2]), (16, 2))
    tta = [jax.nn.softmax(train.predict_logits(teacher, batch, flip=flip, crop_at=at) / 2.0)
           for flip, at in ((False, (6, 2)), (True, (6, 48 - 40 - 2)))]
    np.testing.assert_allclose(train.teacher_probs((teacher,), faces, crop_at, None, config), np.mean(tta, 0),
                               atol=1e-6)
    # With erasing, the mirror image's view mirrors the window and the rectangle: the targets of a face and of
    # its mirror image are the same two views.
    crop_at = preprocess.random_crop_offsets(jax.random.key(0), 16, 48, 48, 40)
    erased = preprocess.erase_mask(jax.random.key(1), 16, 40, 40, 1.0)
    mirrored_at = crop_at.at[:, 1].set(48 - 40 - crop_at[:, 1])
    targets = train.teacher_probs((teacher,), faces, crop_at, erased, config)
    np.testing.assert_allclose(train.teacher_probs((teacher,), faces[:, :, ::-1], mirrored_at, erased[:, :, ::-1],
                                                   config), targets, atol=1e-6)
    one_view = train.teacher_probs((teacher,), faces, crop_at, erased, dataclasses.replace(config, distill_flip=False))
    assert not np.allclose(one_view, targets, atol=1e-4)
    with pytest.raises(configs.ConfigError, match="--distill_flip=True: needs teachers"):
        configs.tiny_config(distill_flip=True)


def test_alignment_loss_by_hand():
    quarter_turn = jnp.array([[0.0, -1.0, 0.3], [1.0, 0.0, -0.2]])  # the augmentation's +90 degrees
    applied = jnp.stack([quarter_turn, quarter_turn])
    undone = jnp.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])  # -90 degrees; translations play no part
    identity = jnp.eye(2, 3)
    weights = jnp.array([1.0, 3.0])
    assert float(train.alignment_loss(jnp.stack([undone, undone]), applied, weights)) == pytest.approx(0, abs=1e-7)
    # The identity is 1 away from -90 degrees in each of the four entries: 4 for the face that keeps it.
    loss = train.alignment_loss(jnp.stack([undone, identity]), applied, weights)
    assert float(loss) == pytest.approx(3 * 4 / 4, rel=1e-6)


def test_train_only_updates_the_named_parts_and_keeps_no_moments_for_the_rest(small_fer2013, tmp_path):
    from ferjax import loop

    config = configs.tiny_config(model="_tiny_stn_deep", train_only=("stn_loc",))
    faces = small_fer2013.train
    state = train.create_train_state(jax.random.key(0), models.create(config.model), config, steps_per_epoch=4,
                                     mean_image=preprocess.training_mean(faces.images))
    stepped, _ = jax.jit(functools.partial(train.train_step, config=config))(
        state, next(data.batches(faces, 16)), jax.random.key(1))
    for part in ("convs", "classifier"):
        jax.tree.map(np.testing.assert_array_equal, stepped.params[part], state.params[part])
    jax.tree.map(np.testing.assert_array_equal, stepped.batch_stats["convs"], state.batch_stats["convs"])
    assert np.any(stepped.batch_stats["stn_loc"]["bn_0"]["mean"] != state.batch_stats["stn_loc"]["bn_0"]["mean"])
    # theta's kernel starts at zero, so on the first step only theta itself has a gradient.
    assert np.any(stepped.params["stn_loc"]["theta"]["kernel"] != state.params["stn_loc"]["theta"]["kernel"])
    moments = [leaf for leaf in jax.tree.leaves(state.opt_state) if getattr(leaf, "ndim", 0) > 0]
    loc_sizes = sorted(leaf.size for leaf in jax.tree.leaves(state.params["stn_loc"]))
    assert sorted(leaf.size for leaf in moments) == sorted(2 * loc_sizes)  # Adam's mu and nu, for stn_loc alone

    with pytest.raises(configs.ConfigError, match="--train_only=stn_loc,trunk: _tiny_stn_deep has no trunk"):
        loop.train_and_evaluate(dataclasses.replace(config, train_only=("stn_loc", "trunk")), str(tmp_path),
                                dataset=small_fer2013)


def test_sharpness_aware_gradient_by_hand():
    # loss = 0.5 * sum(a * w^2), so the gradient is a * w, at the weights and at the moved ones alike.
    curvature = {"w": jnp.array([1.0, 3.0]), "v": {"x": jnp.array([2.0])}}
    params = {"w": jnp.array([0.5, -1.0]), "v": {"x": jnp.array([2.0])}}
    grad_fn = jax.grad(lambda p: 0.5 * sum(jnp.sum(a * w**2) for a, w in zip(jax.tree.leaves(curvature),
                                                                              jax.tree.leaves(p))))
    direction = grad_fn(params)  # [0.5, -3] and [4]: norm sqrt(25.25)
    moved = train.sharpness_aware_gradient(grad_fn, params, direction, 0.1)
    step = 0.1 / np.sqrt(25.25)
    np.testing.assert_allclose(moved["w"], [1 * (0.5 + 0.5 * step), 3 * (-1 - 3 * step)], rtol=1e-6)
    np.testing.assert_allclose(moved["v"]["x"], [2 * (2 + 4 * step)], rtol=1e-6)


def test_sam_updates_along_the_moved_gradient_and_moves_only_the_trained_parts(small_fer2013, monkeypatch):
    config = configs.tiny_config(model="_tiny_stn_deep", train_only=("stn_loc",), sam_rho=0.5, optimizer="sgd",
                                 momentum=0.0, learning_rate=1.0)
    state = _state(config, small_fer2013.train)
    sam_gradient, seen = train.sharpness_aware_gradient, {}

    def recording(grad_fn, params, direction, rho):
        seen["direction"] = direction
        seen["moved"] = sam_gradient(grad_fn, params, direction, rho)
        return seen["moved"]

    monkeypatch.setattr(train, "sharpness_aware_gradient", recording)
    stepped, _ = train.train_step(state, _batch(small_fer2013.train, 16), jax.random.key(1), config=config)
    for part in ("convs", "classifier"):
        assert all(not np.any(d) for d in jax.tree.leaves(seen["direction"][part]))
    # SGD at learning rate 1: the trained part moves by exactly minus the gradient at the moved weights.
    jax.tree.map(lambda new, old, g: np.testing.assert_allclose(new, old - g, rtol=1e-6, atol=1e-7),
                 stepped.params["stn_loc"], state.params["stn_loc"], seen["moved"]["stn_loc"])
    # theta's kernel starts at zero: only theta has a gradient at the weights, the layers before it have one
    # once theta has moved.
    assert not np.any(seen["direction"]["stn_loc"]["bn_0"]["scale"])
    assert np.any(seen["moved"]["stn_loc"]["bn_0"]["scale"])
    with pytest.raises(configs.ConfigError, match="--sam_rho=-0.1: must be >= 0"):
        configs.tiny_config(sam_rho=-0.1)


def test_train_step_adds_the_weighted_alignment_loss_of_the_warps_it_applied(small_fer2013):
    batch = _batch(small_fer2013.train, 16)
    batch["mask"] = (np.arange(16) < 12).astype(np.float32)  # the last four faces count for nothing
    rng = jax.random.key(0)

    def loss(config):
        state = _state(config, small_fer2013.train)
        return float(jax.jit(functools.partial(train.train_step, config=config))(state, batch, rng)[1]["loss"])

    plain = configs.tiny_config(model="_tiny_stn_deep", rotate=30, scale=0.2)
    aligned = dataclasses.replace(plain, align_weight=2.0).validate()
    # A fresh localisation net answers the identity for every face; the step's augmentation key is the first of four.
    _, _, applied = preprocess.augment(jax.random.split(rng, 4)[0], batch["image"].astype(jnp.float32),
                                       train._augment_config(plain))
    expected = train.alignment_loss(jnp.broadcast_to(jnp.eye(2, 3), applied.shape), applied, batch["mask"])
    assert float(expected) > 0.01
    assert loss(aligned) - loss(plain) == pytest.approx(2.0 * float(expected), rel=1e-4)


@pytest.mark.parametrize("fields, message", [
    ({"model": "_tiny_cnn", "rotate": 10}, "needs a model with a spatial transformer"),
    ({"model": "_tiny_stn_deep"}, "needs --rotate or --scale"),
])
def test_alignment_needs_attention_and_a_warp_to_undo(fields, message):
    with pytest.raises(configs.ConfigError, match=f"--align_weight=1.0: {message}"):
        configs.tiny_config(align_weight=1.0, **fields)


@pytest.mark.parametrize("fields, message", [
    ({"model": "_tiny_cnn", "stn_transform": "similarity"}, "needs a model with a spatial transformer"),
    ({"model": "_tiny_stn_deep", "stn_transform": "rigid"}, "choose one of affine, similarity"),
])
def test_the_transform_needs_attention_and_a_known_name(fields, message):
    with pytest.raises(configs.ConfigError, match=f"--stn_transform=.*: {message}"):
        configs.tiny_config(**fields)


def test_mixup_blends_the_labels_and_class_weights_as_the_faces(small_fer2013):
    config = configs.tiny_config(mixup=0.4, flip=False, dropout=0.0)
    state = _state(config, small_fer2013.train)
    class_weights = np.arange(1.0, 8.0, dtype=np.float32)
    state = state.replace(class_weights=jnp.asarray(class_weights))
    batch = next(data.batches(small_fer2013.train, 16, shuffle_seed=0))  # shuffled: faces of several classes
    batch["mask"] = (np.arange(16) < 12).astype(np.float32)
    rng = jax.random.key(0)
    _, metrics = jax.jit(functools.partial(train.train_step, config=config))(state, batch, rng)

    # The step blends with the key folded in at 1; without flip or warps the faces reach it unchanged.
    mixed, partner, lam = preprocess.mixup(jax.random.fold_in(rng, 1), batch["image"].astype(jnp.float32), 0.4)
    (logits, _), _ = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                                    train.model_inputs(state, mixed, False), train=True, mutable=["batch_stats"])
    log_probs = np.asarray(jax.nn.log_softmax(logits))
    labels, partner, lam = batch["label"], np.asarray(partner), np.asarray(lam)
    rows = np.arange(16)
    per_face = -(lam * log_probs[rows, labels] + (1 - lam) * log_probs[rows, labels[partner]])
    weights = batch["mask"] * (lam * class_weights[labels] + (1 - lam) * class_weights[labels[partner]])
    assert np.any(labels != labels[partner])
    assert float(metrics["cross_entropy"]) == pytest.approx(np.sum(weights * per_face) / np.sum(weights), rel=1e-4)


@pytest.mark.parametrize("fields, message", [
    ({"model": "_tiny_hog"}, "not for the HOG model"),
    ({"model": "_tiny_stn_deep", "rotate": 10, "align_weight": 1.0}, "not with --align_weight"),
    ({"mixup": -0.2}, "must be >= 0"),
])
def test_mixup_refuses_what_it_cannot_blend(fields, message):
    with pytest.raises(configs.ConfigError, match=f"--mixup=.*: {message}"):
        configs.tiny_config(**{"mixup": 0.2, **fields})


def test_bfloat16_computation_keeps_float32_parameters(small_fer2013):
    config = configs.tiny_config(model="_tiny_stn_deep", dtype="bfloat16")
    state = _state(config, small_fer2013.train)
    batch = _batch(small_fer2013.train, 16)
    state, metrics = jax.jit(functools.partial(train.train_step, config=config))(state, batch, jax.random.key(0))
    assert np.isfinite(float(metrics["loss"]))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(state.params))
    with pytest.raises(configs.ConfigError, match="--dtype='float8'"):
        configs.tiny_config(dtype="float8")


def test_crop_models_train_on_windows_and_predict_on_the_centre(small_fer2013):
    config = configs.tiny_config(crop=40, model="_tiny_cnn")
    state = _state(config, small_fer2013.train)
    assert state.crop == 40
    batch = _batch(small_fer2013.train, 16)
    faces = batch["image"].astype(np.float32)
    full = preprocess.normalize(faces, state.mean_image)
    np.testing.assert_allclose(train.model_inputs(state, faces, False)[..., 0], full[:, 4:44, 4:44], atol=1e-6)
    np.testing.assert_allclose(train.model_inputs(state, faces, False, crop_at=(8, 0))[..., 0], full[:, 8:48, 0:40],
                               atol=1e-6)
    state, metrics = jax.jit(functools.partial(train.train_step, config=config))(state, batch, jax.random.key(1))
    assert np.isfinite(float(metrics["loss"]))
    # Ten-crop: the five windows of the model's own size and their mirrors, probabilities averaged.
    views = [jax.nn.softmax(train.predict_logits(state, batch, flip=flip, crop_at=at))
             for flip in (False, True) for at in preprocess.five_crop_offsets(48, 48, 40)]
    np.testing.assert_allclose(evaluate.predict_probs(state, batch, tta="tencrop"), np.mean(views, 0), atol=1e-5)
    assert not np.allclose(views[0], views[4], atol=1e-4)  # the windows differ


def test_crop_must_fit_the_face():
    with pytest.raises(configs.ConfigError, match="--crop=48"):
        configs.tiny_config(crop=48)


def test_the_readme_loop_trains_an_epoch_and_reports_the_val_accuracy_evaluate_gives(small_fer2013, monkeypatch,
                                                                                   capsys):
    """The README's Programmatic API example runs as written, here on a few hundred faces for one epoch."""
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    example = re.search(r"## Programmatic API\n.*?```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.setattr(data, "load", lambda *args, **kwargs: small_fer2013)
    get_config = configs.get_config
    monkeypatch.setattr(configs, "get_config", lambda model, **kwargs: get_config(model, **{**kwargs, "epochs": 1}))
    monkeypatch.setattr(host_memory, "keep_freed_memory", lambda: True)  # leave the test process's malloc alone
    namespace = {}
    exec(compile(example, "README.md", "exec"), namespace)

    state, val = namespace["state"], small_fer2013.val
    assert int(state.step) == data.num_batches(len(small_fer2013.train), namespace["config"].batch_size)
    probs = evaluate.predict_split(train.evaluation_state(state), val, 500)
    epoch, accuracy = capsys.readouterr().out.split()
    assert (epoch, float(accuracy)) == ("0", pytest.approx(evaluate.metrics_from_probs(val.labels, probs)["accuracy"]))
