"""Every registered model: exact parameter count, shapes, train/eval behaviour, attention specifics."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ferjax import features, models
from ferjax.models.stn import LocalizationNet


def conv_bn(cin, cout):
    return 9 * cin * cout + 2 * cout  # 3x3 kernel without bias, BN scale and bias


def vgg(widths, convs_per_stage, hidden, extra_features=0, size=48):
    """Parameters of ConvStack + Head, counted from the architecture."""
    total, cin = 0, 1
    for width in widths:
        for _ in range(convs_per_stage):
            total += conv_bn(cin, width)
            cin = width
    features = (size // 2 ** len(widths)) ** 2 * widths[-1] + extra_features
    for h in hidden:
        total += features * h + 2 * h  # dense without bias, BN
        features = h
    return total + features * 7 + 7


LOCALISATION = (7 * 7 * 1 * 8 + 8) + (5 * 5 * 8 * 10 + 10) + (640 * 32 + 32) + (32 * 6 + 6)
# With batch norm (the CNN attention variant): no biases before it, a scale and a bias per unit.
NORMALIZED_LOCALISATION = LOCALISATION - (8 + 10 + 32) + 2 * (8 + 10 + 32)
DEEP_EMOTION = LOCALISATION + (9 * 10 + 10) + 3 * (9 * 10 * 10 + 10) + 2 * 10 + (810 * 50 + 50) + (50 * 7 + 7)
HOG_DIM = features.hog_dim(48, 9, 8, 2)

EXPECTED_PARAMS = {
    "cnn_shallow": vgg((32, 64, 128), 1, (256,)),
    "cnn_medium": vgg((32, 64, 128, 256), 2, (256,)),
    "cnn_deep": vgg((64, 128, 256, 512), 2, (512,)),
    "hog": vgg((32, 64, 128, 256), 2, (256,), extra_features=HOG_DIM) + 2 * HOG_DIM,
    "stn": DEEP_EMOTION,
    "stn_deep": NORMALIZED_LOCALISATION + vgg((32, 64, 128, 256), 2, (256,)),
    "_tiny_cnn": vgg((4, 8), 1, (16,)),
    "_tiny_hog": vgg((4, 8), 1, (16,), extra_features=HOG_DIM) + 2 * HOG_DIM,
    "_tiny_stn_deep": NORMALIZED_LOCALISATION + vgg((4, 8), 1, (16,)),
}


def _init(model, batch=2):
    x = jax.random.normal(jax.random.key(0), (batch, 48, 48, 1))
    inputs = {"hog": jax.random.uniform(jax.random.key(1), (batch, HOG_DIM))} if model.needs_hog else {}
    variables = model.init({"params": jax.random.key(2), "dropout": jax.random.key(3)}, x, train=False, **inputs)
    return variables, x, inputs


def test_every_registered_model_has_an_expected_count():
    assert set(EXPECTED_PARAMS) == set(models.MODELS)
    assert DEEP_EMOTION == 66877  # the paper's network is tiny


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_parameter_count(name):
    variables = jax.eval_shape(lambda: _init(models.create(name))[0])  # shapes only: no compute
    assert models.count_params(variables["params"]) == EXPECTED_PARAMS[name]


@pytest.mark.parametrize("name", ["_tiny_cnn", "_tiny_hog", "_tiny_stn_deep", "stn"])
def test_shapes_and_finiteness_with_and_without_jit(name):
    model = models.create(name)
    variables, x, inputs = _init(model, batch=3)
    (logits, aux) = model.apply(variables, x, train=False, **inputs)
    (jit_logits, _) = jax.jit(lambda v, x: model.apply(v, x, train=False, **inputs))(variables, x)
    assert logits.shape == (3, 7) and np.isfinite(np.asarray(logits)).all()
    np.testing.assert_allclose(logits, jit_logits, atol=1e-4)
    assert aux["prelogits"].shape[0] == 3


@pytest.mark.parametrize("name", ["_tiny_cnn", "stn"])
def test_train_mode_uses_dropout_and_batch_statistics(name):
    model = models.create(name)
    variables, x, inputs = _init(model, batch=4)

    def train_apply(key):
        return model.apply(variables, x, train=True, rngs={"dropout": key}, mutable=["batch_stats"], **inputs)

    (a, _), updated = train_apply(jax.random.key(0))
    (b, _), _ = train_apply(jax.random.key(1))
    assert not np.allclose(a, b)  # dropout masks differ
    old, new = jax.tree.leaves(variables["batch_stats"]), jax.tree.leaves(updated["batch_stats"])
    assert any(not np.allclose(o, n) for o, n in zip(old, new))  # running statistics move
    (e1, _), (e2, _) = (model.apply(variables, x, train=False, **inputs) for _ in range(2))
    np.testing.assert_array_equal(e1, e2)  # eval is deterministic


def test_stn_starts_from_the_identity_transform():
    model = models.create("stn")
    variables, x, _ = _init(model)
    (_, aux) = model.apply(variables, x, train=False)
    np.testing.assert_allclose(aux["theta"], np.broadcast_to(np.eye(2, 3), (2, 2, 3)), atol=1e-6)
    np.testing.assert_allclose(aux["warped"], x, atol=1e-5)


@pytest.mark.parametrize("name", ["stn", "_tiny_stn_deep"])
def test_a_similarity_transformer_turns_zooms_and_shifts_only(name):
    affine, similarity = models.create(name), models.create(name, stn_transform="similarity")
    variables, x, _ = _init(affine)  # the same variables serve both: the theta layer keeps six outputs
    loc = variables["params"]["stn_loc"]
    bias = jnp.array([1.1, 0.3, 0.05, -0.1, 0.9, -0.02])  # [a, b, tx, c, d, ty], a shear among them
    variables = {**variables, "params": {**variables["params"], "stn_loc": {**loc, "theta": {**loc["theta"],
                                                                                         "bias": bias}}}}
    (_, free), (_, restricted) = (model.apply(variables, x, train=False) for model in (affine, similarity))
    np.testing.assert_allclose(free["theta"], np.broadcast_to(bias.reshape(2, 3), (2, 2, 3)), atol=1e-6)
    np.testing.assert_allclose(restricted["theta"], np.broadcast_to([[1.0, 0.2, 0.05], [-0.2, 1.0, -0.02]],
                                                                    (2, 2, 3)), atol=1e-6)


def test_stn_can_warp_the_features_as_the_figure_draws():
    model = models.create("stn", warp_at="features")
    variables, x, _ = _init(model)
    assert models.count_params(variables["params"]) == DEEP_EMOTION
    (logits, aux) = model.apply(variables, x, train=False)
    assert logits.shape == (2, 7) and aux["warped"].shape == (2, 9, 9, 10)


def _theta_layer_grads(model):
    """Gradients of a training-mode loss (sum of squared logits) with respect to the localisation net's theta layer."""
    variables, x, _ = _init(model)

    def loss(params):
        (logits, _), _ = model.apply({**variables, "params": params}, x, train=True,
                                     rngs={"dropout": jax.random.key(0)}, mutable=["batch_stats"])
        return jnp.sum(logits ** 2)

    return jax.jit(jax.grad(loss))(variables["params"])["stn_loc"]["theta"]


def test_gradients_reach_the_localisation_network():
    grads = _theta_layer_grads(models.create("stn"))
    # The theta layer starts at zero kernel, so the gradient flows into it (and from there, after one step, further).
    assert float(jnp.abs(grads["kernel"]).sum()) > 0
    assert float(jnp.abs(grads["bias"]).sum()) > 0


def test_a_similarity_transformer_learns_only_turn_zoom_and_shift():
    grad_2x3 = _theta_layer_grads(models.create("stn", stn_transform="similarity"))["bias"].reshape(2, 3)
    # Through the projection a and d get one gradient, b and c opposite ones: shear and stretch get none.
    assert float(jnp.abs(grad_2x3).sum()) > 0
    np.testing.assert_allclose(grad_2x3[0, 0], grad_2x3[1, 1], rtol=1e-5)
    np.testing.assert_allclose(grad_2x3[0, 1], -grad_2x3[1, 0], rtol=1e-5)


def test_batch_norm_keeps_every_localisation_unit_alive():
    # The FC layer's inputs are ReLU outputs (>= 0), so a negative kernel silences each of its units for
    # every face: what training did to the plain localisation net behind the wide CPU trunk.
    x = jax.random.normal(jax.random.key(0), (16, 48, 48, 1))
    for normalize, alive_units in [(False, 0), (True, 32)]:
        net = LocalizationNet(normalize=normalize)
        # init returns what the net sowed too; keep only the variables, so apply sows the hidden layer once.
        variables = {k: v for k, v in net.init(jax.random.key(1), x).items() if k != "attention"}
        dense = variables["params"]["Dense_0"]
        params = {**variables["params"], "Dense_0": {**dense, "kernel": -jnp.abs(dense["kernel"])}}
        _, state = net.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats", "attention"])
        (hidden,) = state["attention"]["hidden"]  # the FC layer's units after their ReLU, as the net sows them
        assert int(jnp.sum(jnp.max(hidden, axis=0) > 0)) == alive_units
    assert "stn_loc" in _init(models.create("_tiny_stn_deep"))[0]["batch_stats"]


def test_describe_reports_params_and_flops_that_grow_with_depth():
    shallow, medium, deep = (models.describe(n) for n in ("cnn_shallow", "cnn_medium", "cnn_deep"))
    assert shallow["params"] == EXPECTED_PARAMS["cnn_shallow"]
    assert 0 < shallow["flops"] < medium["flops"] < deep["flops"]


def test_unknown_model_and_field_are_clear_errors():
    with pytest.raises(ValueError, match="unknown model 'vgg99'; choose one of cnn_shallow"):
        models.create("vgg99")
    with pytest.raises(ValueError, match="bad config for model 'stn'"):
        models.create("stn", widths=(8,))


def test_max_pool_matches_flax_with_odd_sizes():
    from ferjax.models.layers import max_pool_2x2

    x = jax.random.normal(jax.random.key(0), (2, 17, 10, 3))
    np.testing.assert_array_equal(max_pool_2x2(x), nn.max_pool(x, (2, 2), strides=(2, 2)))
    weights = jax.random.normal(jax.random.key(1), (2, 8, 5, 3))
    grad = jax.grad(lambda x, pool: (pool(x) * weights).sum())
    np.testing.assert_array_equal(grad(x, max_pool_2x2), grad(x, lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))))
    # Tied maxima share the gradient, as the autodiff of a max does.
    ties = jnp.round(x)
    windows = ties[:, :16].reshape(2, 8, 2, 5, 2, 3)
    maxima_per_window = (windows == max_pool_2x2(ties)[:, :, None, :, None]).sum(axis=(2, 4))
    assert int((maxima_per_window > 1).sum()) > 20

    def reshaped_max(x):
        return x[:, :16].reshape(2, 8, 2, 5, 2, 3).max(axis=(2, 4))

    np.testing.assert_allclose(grad(ties, max_pool_2x2), grad(ties, reshaped_max), rtol=1e-6)


def test_ceil_pool_matches_flax_same_pooling():
    from ferjax.models.layers import max_pool_2x2, pad_to_even

    def ceil_pool(x):
        return max_pool_2x2(pad_to_even(x))

    def flax_same(x):
        return nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")  # pads the odd edge with -inf

    x = jax.random.normal(jax.random.key(0), (2, 5, 8, 3))
    np.testing.assert_array_equal(ceil_pool(x), flax_same(x))
    weights = jax.random.normal(jax.random.key(1), (2, 3, 4, 3))
    grad = jax.grad(lambda x, pool: (pool(x) * weights).sum())
    np.testing.assert_array_equal(grad(x, ceil_pool), grad(x, flax_same))


def test_ceil_pool_keeps_the_last_row_and_column_of_a_40x40_crop():
    widths = (48, 96, 192, 384)  # 40 -> 20 -> 10 -> 5 -> 2 (floor) or 3 (ceil)
    x = jnp.zeros((1, 40, 40, 1))
    for ceil_pool, side in [(False, 2), (True, 3)]:
        model = models.create("cnn_shallow", widths=widths, ceil_pool=ceil_pool)
        variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
        assert variables["params"]["classifier"]["fc1"]["kernel"].shape == (side * side * 384, 256)
    with pytest.raises(ValueError, match="bad config for model 'stn'"):
        models.create("stn", ceil_pool=True)


@pytest.mark.parametrize("kernel_size, padding, channels", [
    ((3, 3), "SAME", 1),  # one im2col matmul for the kernel gradient, col2im for the input gradient
    ((7, 7), "VALID", 1),  # chunked kernel gradient, col2im input gradient
    ((3, 3), "SAME", 24),  # chunked kernel gradient, convolution input gradient
    ((5, 5), "VALID", 3),
    ((3, 2), "SAME", 20),  # an even kernel width pads unevenly, as nn.Conv does
    ((3, 2), "SAME", 1),
])
def test_conv_matches_flax_values_and_gradients(kernel_size, padding, channels):
    from ferjax.models.layers import Conv

    x = jax.random.normal(jax.random.key(1), (12, 11, 9, channels))  # three kernel-gradient chunks of 4
    ours, reference = Conv(6, kernel_size, padding), nn.Conv(6, kernel_size, padding=padding)
    variables = reference.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x)) == jax.tree.map(jnp.shape, variables)

    def loss(module):
        return lambda v, x: jnp.sum(jnp.sin(module.apply(v, x)))

    np.testing.assert_allclose(ours.apply(variables, x), reference.apply(variables, x), rtol=1e-5, atol=1e-5)
    got = jax.grad(loss(ours), argnums=(0, 1))(variables, x)
    want = jax.grad(loss(reference), argnums=(0, 1))(variables, x)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(6, 5, 4, 3), (10, 7)])
def test_batch_norm_relu_matches_flax_values_gradients_and_running_stats(shape):
    from ferjax.models.layers import BatchNormReLU

    class Reference(nn.Module):
        @nn.compact
        def __call__(self, x, *, train):
            return nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(x))

    class Ours(nn.Module):
        @nn.compact
        def __call__(self, x, *, train):
            return BatchNormReLU(momentum=0.9, name="bn")(x, train=train)

    x = 2.0 * jax.random.normal(jax.random.key(0), shape) + 0.5
    variables = Reference().init(jax.random.key(1), x, train=False)
    assert jax.tree.map(jnp.shape, Ours().init(jax.random.key(1), x, train=False)) == jax.tree.map(jnp.shape, variables)
    features = shape[-1]  # a scale and bias other than the initial ones, and running stats other than 0 and 1
    params = {"bn": {"scale": jnp.linspace(0.5, 1.5, features), "bias": jnp.linspace(-0.3, 0.3, features)}}
    stats = {"bn": {"mean": jnp.linspace(-1, 1, features), "var": jnp.linspace(0.5, 2, features)}}
    variables = {"params": params, "batch_stats": stats}
    weights = jax.random.normal(jax.random.key(2), shape)  # a loss whose gradient differs per element

    def loss(module):
        def f(params, x):
            y, updates = module.apply({"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
            return jnp.sum(weights * y), (y, updates)
        return f

    for train in (False, True):
        np.testing.assert_allclose(Ours().apply(variables, x, train=train, mutable=["batch_stats"])[0],
                                   Reference().apply(variables, x, train=train, mutable=["batch_stats"])[0],
                                   rtol=1e-5, atol=1e-5)
    (got_grads, (_, got_stats)) = jax.grad(loss(Ours()), argnums=(0, 1), has_aux=True)(params, x)
    (want_grads, (_, want_stats)) = jax.grad(loss(Reference()), argnums=(0, 1), has_aux=True)(params, x)
    for got, want in zip(jax.tree.leaves((got_grads, got_stats)), jax.tree.leaves((want_grads, want_stats))):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
