"""The descent trainer (simulations.train): exact checks against hand-written steps and closed forms.

Exact: optax.sgd's update is bit-for-bit p - learning_rate g; a quadratic's descent follows its
closed-form geometric sequence; weight decay is losses.weight_decay_penalty on the chosen part of
the parameters; recorded values (last or mean) and the step indices handed to ``batch``.
Invariance: jit equals no jit, vmap over runs equals a loop. Errors: bad arguments are named, a
divergence names its step and a remedy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simulations import losses, train

# A few float64 operations per step over 100 steps of a contraction.
EXACT = 1e-12


def _quadratic(params):
    return 0.5 * jnp.sum(params["a"] ** 2) + jnp.sum(params["b"] ** 2)


PARAMS0 = {"a": jnp.asarray([1.0, -2.0]), "b": jnp.asarray([[0.5, 3.0]])}


def test_optax_sgd_step_is_bit_identical_to_the_plain_update():
    """optax.sgd: p + (-lr) g, the same float as p - lr g (the experiments' numbers stay unchanged)."""
    key = jax.random.PRNGKey(0)
    params = {"w": jax.random.normal(key, (7, 5)), "v": jax.random.normal(jax.random.fold_in(key, 1), (3,))}
    objective = lambda p: jnp.sum(jnp.tanh(p["w"] @ p["w"].T) ** 2) + jnp.sum(p["v"] ** 3)

    @jax.jit
    def plain(params, learning_rate):
        step = lambda p, _: (jax.tree_util.tree_map(lambda q, g: q - learning_rate * g, p, jax.grad(objective)(p)),
                             None)
        return jax.lax.scan(step, params, None, length=5)[0]

    trainer = jax.jit(lambda p, lr: train.descend(objective, p, steps=5, learning_rate=lr).params)
    for learning_rate in (0.02, 0.3):
        ours, expected = trainer(params, learning_rate), plain(params, learning_rate)
        for name in params:
            np.testing.assert_array_equal(ours[name], expected[name])


def test_quadratic_descent_follows_the_geometric_sequence_with_weight_decay():
    lr, wd, steps = 0.1, 0.3, 100
    out = train.train(_quadratic, PARAMS0, steps=steps, record_every=10, learning_rate=lr, weight_decay=wd)
    k = np.arange(1, 11) * 10
    np.testing.assert_allclose(out.trajectory["a"], np.asarray(PARAMS0["a"]) * (1 - lr * (1 + wd)) ** k[:, None],
                               rtol=EXACT)
    b = np.asarray(PARAMS0["b"][0]) * (1 - lr * (2 + wd)) ** k[:, None]
    np.testing.assert_allclose(out.trajectory["b"][:, 0], b, rtol=EXACT)
    # The record of a block is the objective (penalty included) at the last step, before its update.
    before = {"a": PARAMS0["a"] * (1 - lr * (1 + wd)) ** 99, "b": PARAMS0["b"] * (1 - lr * (2 + wd)) ** 99}
    expected_loss = _quadratic(before) + losses.weight_decay_penalty(before, wd)
    assert float(out.losses[-1]) == pytest.approx(float(expected_loss), rel=1e-10)
    np.testing.assert_allclose(train.record_times(lr, steps, 10), lr * k, rtol=EXACT)


def test_decayed_selects_the_penalized_part():
    lr, wd = 0.1, 0.5
    out = train.descend(_quadratic, PARAMS0, steps=3, learning_rate=lr, weight_decay=wd, decayed=lambda p: p["a"])
    np.testing.assert_allclose(out.params["a"], np.asarray(PARAMS0["a"]) * (1 - lr * (1 + wd)) ** 3, rtol=EXACT)
    np.testing.assert_allclose(out.params["b"], np.asarray(PARAMS0["b"]) * (1 - 2 * lr) ** 3, rtol=EXACT)


@pytest.mark.parametrize("record", ["last", "mean"])
def test_batch_receives_global_steps_and_records_last_or_mean(record):
    """aux = the batch value: records are the block's last or mean step index."""
    out = train.descend(lambda p, b: (jnp.sum(p**2) + 0.0 * b, b), jnp.ones(2), steps=12, record_every=4,
                        learning_rate=0.01, batch=lambda step: step.astype(jnp.float64), record=record,
                        has_aux=True, record_params=False)
    blocks = np.arange(12).reshape(3, 4)
    np.testing.assert_array_equal(out.aux, blocks[:, -1] if record == "last" else blocks.mean(axis=1))
    assert out.trajectory is None and out.losses.shape == (3,)


def test_jit_equals_no_jit_and_vmap_equals_a_loop():
    run = lambda p, lr: train.descend(_quadratic, p, steps=20, record_every=5, learning_rate=lr, weight_decay=0.1)
    rates = jnp.asarray([0.05, 0.2])
    stacked = {k: jnp.stack([v, 2 * v]) for k, v in PARAMS0.items()}
    batched = jax.jit(jax.vmap(run))(stacked, rates)
    for i in range(2):
        single = run({k: v[i] for k, v in stacked.items()}, rates[i])
        np.testing.assert_allclose(batched.losses[i], single.losses, rtol=EXACT)
        np.testing.assert_allclose(batched.params["a"][i], single.params["a"], rtol=EXACT)


def test_divergence_names_the_step_and_a_remedy():
    with pytest.raises(train.TrainingDivergenceError, match=r"step \d+ .*lower learning_rate"):
        train.train(_quadratic, PARAMS0, steps=2000, record_every=100, learning_rate=50.0)


@pytest.mark.parametrize("kwargs, name", [({"learning_rate": 0.0}, "learning_rate"), ({"steps": 12}, "steps"),
                                          ({"weight_decay": -1.0}, "weight_decay"), ({"record": "max"}, "record")])
def test_bad_arguments_are_named(kwargs, name):
    arguments = {"steps": 10, "record_every": 5, "learning_rate": 0.1, **kwargs}
    with pytest.raises(ValueError, match=name):
        train.train(_quadratic, PARAMS0, **arguments)
