"""Stored programs (simulations.programs): same numbers as jax.jit, loaded instead of traced, safe keys."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from simulations import flow, models, programs
from simulations.experiments.weighting import population_loss


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A private store directory (the suite runs without a compilation cache)."""
    monkeypatch.setattr(programs, "_store", lambda: tmp_path)
    return tmp_path


def _flow_inputs(dim=3):
    params = models.init_linear(jax.random.PRNGKey(0), dim, (dim, dim), init="gaussian", init_scale=0.3)
    args = (jnp.diag(jnp.linspace(0.2, 0.9, dim)), jnp.diag(jnp.linspace(0.5, 2.0, dim)), jnp.zeros(()))
    return params, args, jnp.zeros(()), jnp.zeros(())


def _new_files(store, before, pattern="*.jaxexport"):
    return set(store.glob(pattern)) - before


def _leaves(tree):
    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(tree)]


def test_stored_flow_segment_equals_jit_and_is_loaded_not_traced(store, monkeypatch):
    params, args, t_start, t_arm = _flow_inputs()
    options = flow.FlowOptions()
    plain = jax.jit(flow._segment, static_argnums=(0, 1))(population_loss, options, params, args, t_start, t_arm, None)
    before = set(store.glob("*"))  # the inputs' initialization program is stored too
    first = programs.stored_jit(flow._segment, static_argnums=(0, 1))
    stored = first(population_loss, options, params, args, t_start, t_arm, None)
    assert len(_new_files(store, before)) == 1
    for a, b in zip(_leaves(plain), _leaves(stored)):
        np.testing.assert_array_equal(a, b)  # the same program, bit for bit

    # A new process (a fresh wrapper) loads the stored program instead of exporting (tracing) it.
    def no_export(*args, **kwargs):
        raise AssertionError("traced again although the program was stored")

    monkeypatch.setattr(export, "export", no_export)
    again = programs.stored_jit(flow._segment, static_argnums=(0, 1))(
        population_loss, options, params, args, t_start, t_arm, None)
    for a, b in zip(_leaves(plain), _leaves(again)):
        np.testing.assert_array_equal(a, b)


def test_keys_separate_shapes_options_and_dtypes(store):
    inputs = {dim: _flow_inputs(dim) for dim in (2, 3)}
    before = set(store.glob("*"))
    run = programs.stored_jit(flow._hessian_extremes, static_argnums=0)
    for dim in (2, 3):
        params, args, _, _ = inputs[dim]
        run(population_loss, params, args)
    params, args, t_start, t_arm = inputs[2]
    run(population_loss, jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), params), args)
    assert len(_new_files(store, before)) == 3
    segment = programs.stored_jit(flow._segment, static_argnums=(0, 1))
    for rtol in (1e-5, 1e-6):
        segment(population_loss, flow.FlowOptions(rtol=rtol), params, args, t_start, t_arm, None)
    assert len(_new_files(store, before)) == 5


def test_unstorable_static_arguments_fall_back_to_jit(store):
    params, args, t_start, t_arm = _flow_inputs()
    before = set(store.glob("*"))
    loss = lambda p, a: population_loss(p, a)  # noqa: E731 (a lambda cannot key a stored program)
    out = programs.stored_jit(flow._segment, static_argnums=(0, 1))(
        loss, flow.FlowOptions(), params, args, t_start, t_arm, None)
    assert bool(out["event"])
    assert set(store.glob("*")) == before
    assert programs._static_token(loss) is None
    assert programs._static_token(population_loss) == "simulations.experiments.weighting.population_loss"
    assert programs._static_token(np.sum) is None  # functions outside the two packages never key a program


def test_a_corrupt_stored_program_is_replaced(store):
    params, args, _, _ = _flow_inputs()
    before = set(store.glob("*"))
    programs.stored_jit(flow._hessian_extremes, static_argnums=0)(population_loss, params, args)
    (path,) = _new_files(store, before)
    path.write_bytes(b"not a program")
    out = programs.stored_jit(flow._hessian_extremes, static_argnums=0)(population_loss, params, args)
    assert np.isfinite(np.asarray(out[0]))
    assert path.read_bytes() != b"not a program"


def test_source_fingerprint_changes_with_any_module_of_either_package(tmp_path):
    for package in programs.PACKAGES:
        (tmp_path / package / "sub").mkdir(parents=True)
        (tmp_path / package / "sub" / "module.py").write_text("x = 1\n")
    before = programs.source_fingerprint(tmp_path)
    (tmp_path / "theory" / "notes.txt").write_text("not source")
    assert programs.source_fingerprint(tmp_path) == before
    for package in programs.PACKAGES:
        (tmp_path / package / "sub" / "module.py").write_text("x = 2\n")
        changed = programs.source_fingerprint(tmp_path)
        assert changed != before
        before = changed


def test_named_tuple_parameters_are_stored_and_loaded(store, monkeypatch):
    from simulations.models import relu_head

    params = relu_head.init_relu_head(jax.random.PRNGKey(1), 3, 3, 4, 3)
    args = (jnp.diag(jnp.asarray([0.9, 0.5, 0.2])), jnp.diag(jnp.asarray([1.0, 0.8, 0.5])))
    plain = flow._hessian_extremes(relu_head._flow_loss, params, args)
    before = set(store.glob("*"))
    stored = programs.stored_jit(flow._hessian_extremes, static_argnums=0)(relu_head._flow_loss, params, args)
    assert len(_new_files(store, before)) == 1
    monkeypatch.setattr(export, "export", lambda *a, **k: pytest.fail("traced again"))
    loaded = programs.stored_jit(flow._hessian_extremes, static_argnums=0)(relu_head._flow_loss, params, args)
    for a, b, c in zip(_leaves(plain), _leaves(stored), _leaves(loaded)):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-14)
        np.testing.assert_array_equal(b, c)


def _run_in_a_fresh_process(code: str, cache) -> None:
    """Run ``code`` in a new Python with its compilation cache at ``cache`` and equinox's check
    mode left at its default (equinox reads it once per process)."""
    env = {key: value for key, value in os.environ.items() if key != "EQX_ON_ERROR"}
    env["PROJECTION_HEAD_JAX_CACHE"] = str(cache)
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=300)


def test_named_tuples_only_in_the_output_are_stored_and_loaded_by_a_later_process(tmp_path):
    # A process registers the NamedTuple types it is given; one that only comes out of the program
    # (the trainers' Descent, a network's parameters) must be named beside the stored program, or
    # no program returning one was ever saved and every process traced it again.
    first = (
        "import jax, numpy as np\n"
        "from simulations import programs\n"
        "from simulations.models.relu import init_relu\n"
        "from simulations.runtime import enable_compilation_cache\n"
        "store = enable_compilation_cache() / 'exported'\n"
        "out = programs.stored_jit(init_relu, static_argnums=(1, 2, 3))(jax.random.PRNGKey(3), 3, 4, 2)\n"
        "plain = jax.jit(init_relu, static_argnums=(1, 2, 3))(jax.random.PRNGKey(3), 3, 4, 2)\n"
        "assert type(out).__name__ == 'ReLUParams', type(out)\n"
        "np.testing.assert_array_equal(np.asarray(out.encoder), np.asarray(plain.encoder))\n"
        "np.save(store / 'head.npy', np.asarray(out.head))\n"
        "assert [path.read_text() for path in store.glob('*.types')] == ['simulations.models.relu:ReLUParams']\n"
    )
    second = (
        "import jax, numpy as np\n"
        "from jax import export\n"
        "from simulations import programs\n"
        "from simulations.models.relu import init_relu\n"
        "from simulations.runtime import enable_compilation_cache\n"
        "store = enable_compilation_cache() / 'exported'\n"
        "def no_export(*a, **k):\n"
        "    raise AssertionError('traced and exported again')\n"
        "export.export = no_export\n"
        "out = programs.stored_jit(init_relu, static_argnums=(1, 2, 3))(jax.random.PRNGKey(3), 3, 4, 2)\n"
        "assert type(out).__name__ == 'ReLUParams', type(out)\n"
        "np.testing.assert_array_equal(np.asarray(out.head), np.load(store / 'head.npy'))\n"
    )
    _run_in_a_fresh_process(first, tmp_path)
    assert len(list((tmp_path / "exported").glob("*.jaxexport"))) == 1
    _run_in_a_fresh_process(second, tmp_path)


def test_programs_jax_cannot_export_run_as_plain_jit_and_are_marked(tmp_path):
    # Recording a trajectory makes diffrax check the grid with a host callback when equinox raises
    # its errors (its default; equinox reads the mode once, so this runs in a fresh process).
    code = (
        "import jax, jax.numpy as jnp, numpy as np\n"
        "from jax import export\n"
        "from simulations import flow, models, programs\n"
        "from simulations.experiments.weighting import population_loss\n"
        "from simulations.runtime import enable_compilation_cache\n"
        "jax.config.update('jax_enable_x64', True)\n"
        "store = enable_compilation_cache() / 'exported'\n"
        "params = models.init_linear(jax.random.PRNGKey(0), 3, (3, 3), init='gaussian', init_scale=0.3)\n"
        "args = (jnp.diag(jnp.linspace(0.2, 0.9, 3)), jnp.diag(jnp.linspace(0.5, 2.0, 3)), jnp.zeros(()))\n"
        "point = (params, args, jnp.zeros(()), jnp.zeros(()), jnp.linspace(0.0, 5.0, 4))\n"
        "before = set(store.glob('*'))\n"
        "plain = jax.jit(flow._segment, static_argnums=(0, 1))(population_loss, flow.FlowOptions(), *point)\n"
        "out = programs.stored_jit(flow._segment, static_argnums=(0, 1))(population_loss, flow.FlowOptions(), *point)\n"
        "for a, b in zip(jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(out)):\n"
        "    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))\n"
        "new = set(store.glob('*')) - before\n"
        "assert [path.suffix for path in new] == ['.unexportable'], new\n"
        "def no_export(*a, **k):\n"
        "    raise AssertionError('export attempted again')\n"
        "export.export = no_export\n"
        "programs.stored_jit(flow._segment, static_argnums=(0, 1))(population_loss, flow.FlowOptions(), *point)\n"
    )
    _run_in_a_fresh_process(code, tmp_path)


def test_functions_outside_the_packages_are_never_stored(store):
    def double(x):
        return 2 * x

    before = set(store.glob("*"))
    assert float(programs.stored_jit(double)(jnp.ones(()))) == 2.0
    assert set(store.glob("*")) == before


def _scaled_sum(x, y, *, power, label):
    assert label in ("a", "b")
    return jnp.sum(x**power) + y


def test_static_keyword_arguments_key_the_program(store, monkeypatch):
    monkeypatch.setattr(_scaled_sum, "__module__", "simulations.stand_in")  # as if defined in the package
    run = programs.stored_jit(_scaled_sum, static_argnames=("power", "label"))
    x, y = jnp.arange(3.0), jnp.asarray(1.0)
    before = set(store.glob("*"))
    assert float(run(x, y, power=2, label="a")) == 6.0
    assert float(run(x, y, power=3, label="a")) == 10.0
    assert float(run(x, y, label="b", power=2)) == 6.0
    assert len(_new_files(store, before)) == 3
    monkeypatch.setattr(export, "export", lambda *a, **k: pytest.fail("traced again"))
    again = programs.stored_jit(_scaled_sum, static_argnames=("power", "label"))
    assert float(again(x, y, power=3, label="a")) == 10.0
    with pytest.raises(TypeError, match="static"):  # a keyword not declared static is traced (plain jit)
        programs.stored_jit(_scaled_sum, static_argnames=("power",))(x, y, power=2, label="a")


def test_calls_under_a_transformation_use_the_plain_program(store):
    # A stored program cannot be vmapped or differentiated; inside vmap (as when a batch of inits
    # is drawn at once) the call is traced into the enclosing program, even once it is stored.
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    singles = [models.init_linear(key, 3, (3, 3), init="gaussian", init_scale=0.1) for key in keys]
    stored = set(store.glob("*"))
    assert len(stored) == 1
    batched = jax.vmap(lambda key: models.init_linear(key, 3, (3, 3), init="gaussian", init_scale=0.1))(keys)
    assert set(store.glob("*")) == stored
    for index, single in enumerate(singles):
        for a, b in zip(_leaves(single), _leaves(batched)):
            np.testing.assert_allclose(b[index], a, rtol=1e-15)


def test_a_restarted_batch_compiles_its_stored_programs_once(store, caplog):
    # A restart's inputs are the previous segment's (host) outputs; JAX compiles a stored program
    # separately for placed and for host arguments, so the points must be placed the same way.
    import logging
    import re

    params0 = models.init_balanced(jax.random.PRNGKey(0), 4, (4, 4), 0.1)
    params0, args = jax.tree_util.tree_map(
        lambda leaf: jnp.stack([leaf]),
        (params0, (jnp.diag(jnp.array([0.9, 0.5, 0.8, 0.3])), jnp.diag(jnp.array([1.0, 0.6, 2.0, 0.9])),
                   jnp.zeros(()))))
    with jax.log_compiles(True), caplog.at_level(logging.WARNING):
        result = flow.gradient_flow(population_loss, params0, args, options=flow.FlowOptions(batching="points"),
                                    batched=True)
    assert int(result.restarts[0]) >= 1  # the solver ran again after a certification
    compiled = [record.getMessage() for record in caplog.records
                if re.search(r"Finished XLA compilation of jit\(call\)", record.getMessage())]
    assert len(compiled) == 2, compiled  # the segment and the certification, once each


def test_a_flow_lowers_only_its_solver_programs(tmp_path):
    # Between segments a flow does a few scalar operations per point (motion along the escape
    # direction, saddle tests, the next wait). Run as JAX operations, each was a program of its own,
    # lowered and looked up in the compilation cache in every process: 34 lowerings for this flow,
    # about 20 ms each. In NumPy they lower nothing. (A fresh process: no program is lowered yet.)
    code = (
        "import collections, jax, jax.numpy as jnp\n"
        "from jax import monitoring\n"
        "from simulations import flow, models\n"
        "from simulations.experiments.weighting import population_loss\n"
        "params0 = models.init_balanced(jax.random.PRNGKey(0), 4, (4, 4), 0.1)\n"
        "params0, args = jax.tree_util.tree_map(lambda leaf: jnp.stack([leaf]), (params0, (\n"
        "    jnp.diag(jnp.array([0.9, 0.5, 0.8, 0.3])), jnp.diag(jnp.array([1.0, 0.6, 2.0, 0.9])), jnp.zeros(()))))\n"
        "events = collections.Counter()\n"
        "monitoring.register_event_duration_secs_listener(lambda name, secs, **kw: events.update([name]))\n"
        "result = flow.gradient_flow(population_loss, params0, args, options=flow.FlowOptions(batching='points'),\n"
        "                            batched=True)\n"
        "assert int(result.restarts[0]) >= 1  # a restart: the bookkeeping ran twice\n"
        "lowered = events['/jax/core/compile/jaxpr_to_mlir_module_duration']\n"
        "assert 2 <= lowered <= 4, events  # the segment and the certification, and at most two helpers\n"
    )
    _run_in_a_fresh_process(code, tmp_path)


def test_entry_points_store_flows_that_record_a_trajectory(tmp_path):
    # diffrax checks a recording grid with equinox; raised from a host callback, that check made
    # the flow unexportable (and uncacheable). Entry points turn equinox's checks into NaNs.
    code = (
        "from simulations.runtime import configure_entry_point\n"
        "configure_entry_point()\n"
        "import jax, jax.numpy as jnp\n"
        "from simulations import models\n"
        "from simulations.flow import gradient_flow\n"
        "from simulations.experiments.weighting import population_loss\n"
        "params = models.init_linear(jax.random.PRNGKey(0), 2, (2, 2), init_scale=0.3)\n"
        "args = (jnp.diag(jnp.array([0.9, 0.4])), jnp.diag(jnp.array([1.0, 2.0])), jnp.zeros(()))\n"
        "result = gradient_flow(population_loss, params, args, times=jnp.geomspace(0.1, 100.0, 5))\n"
        "assert bool(result.converged) and bool(jnp.all(jnp.isfinite(result.trajectory[0])))\n"
    )
    _run_in_a_fresh_process(code, tmp_path)
    assert list((tmp_path / "exported").glob("*.jaxexport"))
    assert not list((tmp_path / "exported").glob("*.unexportable"))


def test_entry_points_keep_an_equinox_mode_the_user_set(monkeypatch):
    from simulations import runtime

    monkeypatch.delenv("EQX_ON_ERROR", raising=False)
    runtime.configure_entry_point(cache=False)
    assert os.environ["EQX_ON_ERROR"] == "nan"
    monkeypatch.setenv("EQX_ON_ERROR", "raise")
    runtime.configure_entry_point(cache=False)
    assert os.environ["EQX_ON_ERROR"] == "raise"
