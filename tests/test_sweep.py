"""The sweep engine (simulations/sweep/) and `python -m simulations sweep`.

Exact checks only (no tolerances except the sharded-placement one below): changing swept values
never recompiles (a compile counter), padding never changes other points, the same seed gives
bit-identical arrays, a sweep spread over 4 (forced CPU) devices equals the one-device sweep bit
for bit, and a sweep SIGKILLed at random moments and rerun equals an uninterrupted run bit for bit.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from simulations import sweep
from simulations.experiments import downstream, weighting

WEIGHTING = weighting.EXPERIMENT

REPO = Path(__file__).resolve().parents[1]
# A subprocess imports JAX and compiles the batched solve (~10-30 s on 2 loaded cores); generous cap.
TIMEOUT_S = 600
# GSPMD-partitioned ("sharded") solves differ from the one-device program in the last bits: the
# partitioned adaptive loop rounds differently (measured 2e-14 in weights, 1e-9 relative in
# t_final); the weights, at O(1), must agree far below the flow's own 1e-4 accuracy.
SHARDED_WEIGHT_ATOL = 1e-11

AXES = [("init_scale", [0.3, 0.4])]
CLI_AXES = ["weighting", "--quick", "--set", "init_scale=0.3,0.4"]


def _equal(first: dict, second: dict) -> bool:
    """Same keys and arrays bit for bit; NaN equals NaN (a prediction without closed form is NaN)."""
    def same(a, b):
        a, b = np.asarray(a), np.asarray(b)
        return np.array_equal(a, b, equal_nan=a.dtype.kind in "fc" and b.dtype.kind in "fc")

    return first.keys() == second.keys() and all(same(first[k], second[k]) for k in first)


@pytest.fixture(scope="module")
def base_sweep(tmp_path_factory):
    """4 quick weighting points (2 init scales x 2 seeds) as one chunk, and its compile count."""
    out = tmp_path_factory.mktemp("sweep") / "base"
    with sweep.CompileCounter() as counter:
        summary = sweep.run_sweep(WEIGHTING, out, axes=AXES, seeds=2, quick=True, chunk_size=4, progress=False)
    return out, summary, counter


def test_sweep_runs_and_loads(base_sweep):
    out, summary, _ = base_sweep
    assert summary.as_json() == {"completed": 4, "skipped": 0, "total": 4}
    arrays, records = sweep.load_sweep(out)
    assert arrays["measured"].shape == (4, 2, 3)
    assert [r["axes"] for r in records] == [{"init_scale": s, "seed": d} for s in (0.3, 0.4) for d in (0, 1)]
    assert arrays["diagnostics.converged"].all()
    # The sweep's points are the experiment's own runs (seed varies fastest). Placed on the device
    # like the split placement's slices, so test_split_placement_equals_one_device reuses the program.
    one_device = sweep.make_place(sweep.point_sharding(jax.devices()[:1], 1))
    single = weighting.run_batch([weighting.WeightingConfig.quick(init_scale=0.4, seed=1)], place=one_device)
    assert np.array_equal(arrays["measured"][3], single.measured[0])
    provenance = records[0]["provenance"]
    for key in ("library_version", "git_commit", "git_dirty", "python", "packages", "device", "precision"):
        assert key in provenance
    assert provenance["precision"] == "float64" and provenance["packages"]["jax"] == jax.__version__
    assert records[2]["config"]["init_scale"] == 0.4 and records[2]["seed"] == 0


def test_changing_values_never_recompiles(base_sweep, tmp_path):
    with sweep.CompileCounter() as check:  # the counter sees compilations at all
        jax.jit(lambda x: x * 3.0)(np.arange(3.0))
    assert check.count == 1, check.names
    with sweep.CompileCounter() as counter:
        summary = sweep.run_sweep(WEIGHTING, tmp_path / "other", axes=[("init_scale", [0.25, 0.45])], seeds=2,
                                  quick=True, chunk_size=4, progress=False)
    assert summary.completed == 4
    assert counter.count == 0, counter.names
    assert summary.compiles == 0


def test_padding_does_not_change_other_points(base_sweep, tmp_path):
    """3 points padded to a chunk of 4 equal the same points run beside a different fourth."""
    out, _, _ = base_sweep
    full, _ = sweep.load_sweep(out)
    trimmed = tmp_path / "three"
    summary = sweep.run_sweep(WEIGHTING, trimmed, axes=[("seed", [0, 1, 2])], quick=True, chunk_size=4,
                              progress=False)
    assert summary.total == 3
    three, _ = sweep.load_sweep(trimmed)
    assert np.array_equal(three["measured"][:2], full["measured"][:2])
    assert np.array_equal(three["diagnostics.t_final"][:2], full["diagnostics.t_final"][:2])


def test_same_seed_is_bit_identical(base_sweep, tmp_path):
    out, _, _ = base_sweep
    sweep.run_sweep(WEIGHTING, tmp_path / "again", axes=AXES, seeds=2, quick=True, chunk_size=4, progress=False)
    assert _equal(sweep.load_sweep(out)[0], sweep.load_sweep(tmp_path / "again")[0])


def test_split_placement_equals_one_device(base_sweep):
    """The split placement's slice-and-concatenate, on four 'devices' (the one CPU four times; the
    placed batch-1 program is the one test_sweep_runs_and_loads compiled)."""
    out, _, _ = base_sweep
    arrays, records = sweep.load_sweep(out)
    configs = [weighting.WeightingConfig(**r["config"]) for r in records]
    device = jax.devices()[0]
    split = sweep.run_chunk(weighting.run_batch, configs, [device] * 4, "split")
    assert np.array_equal(split.measured, arrays["measured"])


def test_shape_changing_fields_form_groups():
    plan = sweep.plan_sweep(WEIGHTING, axes=[("depth", [1, 2]), ("init_scale", [0.2, 0.3, 0.4])], seeds=3,
                            chunk_size=4)
    assert plan.total == 18 and len(plan.groups) == 2
    assert [c.points for c in plan.chunks[:3]] == [(0, 1, 2, 3), (4, 5, 6, 7), (8,)]
    assert all(plan.configs[i].depth == 2 for c in plan.chunks if c.group == 1 for i in c.points)
    presets = sweep.plan_sweep(downstream.EXPERIMENT, axes=[("preset", ["default", "ratios4"])], chunk_size=2)
    assert len(presets.groups) == 2 and presets.configs[1].pos_cov == (0.9, 0.7, 0.5, 0.3)


def test_parse_axes_types():
    raw = [("set", "depth=1,2"), ("vector", "pos_cov=0.9,0.5,0.8"), ("set", "width=none,3"),
           ("vector", "pos-cov=0.8,0.5,0.9"), ("preset", "default"), ("set", "init=balanced,aligned")]
    axes = sweep.parse_axes(WEIGHTING, raw)
    assert axes == [("depth", [1, 2]), ("pos_cov", [(0.9, 0.5, 0.8), (0.8, 0.5, 0.9)]), ("width", [None, 3]),
                    ("preset", ["default"]), ("init", ["balanced", "aligned"])]


def test_refuses_different_arguments(base_sweep):
    out, _, _ = base_sweep
    with pytest.raises(ValueError, match="different arguments"):
        sweep.run_sweep(WEIGHTING, out, axes=AXES, seeds=3, quick=True, chunk_size=4, progress=False)
    with pytest.raises(ValueError, match="different arguments"):
        sweep.run_sweep(WEIGHTING, out, axes=AXES, seeds=2, quick=True, chunk_size=2, progress=False)
    again = sweep.run_sweep(WEIGHTING, out, axes=AXES, seeds=2, quick=True, progress=False)  # manifest's chunks
    assert again.as_json() == {"completed": 0, "skipped": 4, "total": 4}


def test_unfinished_sweep_does_not_load(base_sweep, tmp_path):
    out, _, _ = base_sweep
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / sweep.MANIFEST).write_bytes((out / sweep.MANIFEST).read_bytes())
    with pytest.raises(ValueError, match="unfinished"):
        sweep.load_sweep(partial)
    arrays, records = sweep.load_sweep(partial, allow_partial=True)
    assert records == [] and list(arrays["measured"]) == []



def test_dataset_has_named_dimensions_and_swept_coordinates(base_sweep):
    out, _, _ = base_sweep
    arrays, records = sweep.load_sweep(out)
    dataset = sweep.load_sweep_dataset(out)
    assert dataset["measured"].dims == ("point", "layer", "feature")
    assert dataset["effective_rank"].dims == ("point", "layer")
    assert dataset["diagnostics.converged"].dims == ("point",)
    assert dict(dataset.sizes) == {"point": 4, "layer": 2, "feature": 3}
    for path, values in arrays.items():  # the same numbers as the plain arrays, bit for bit
        assert np.array_equal(dataset[path].values, values, equal_nan=True), path
    assert dataset["init_scale"].dims == ("point",) and dataset["seed"].dims == ("point",)
    assert dataset["init_scale"].values.tolist() == [r["axes"]["init_scale"] for r in records] == [0.3, 0.3, 0.4, 0.4]
    assert dataset["seed"].values.tolist() == [0, 1, 0, 1]
    assert dataset["point"].values.tolist() == [0, 1, 2, 3]
    assert dataset.attrs["experiment"] == "weighting"
    loss = arrays["diagnostics.loss"]
    by_scale = dataset["diagnostics.loss"].groupby("init_scale").mean()  # labelled analysis works directly
    assert by_scale["init_scale"].values.tolist() == [0.3, 0.4]
    assert np.array_equal(by_scale.values, [loss[:2].mean(), loss[2:].mean()])


def test_summary_command_tabulates_mean_and_std_against_a_field(base_sweep, tmp_path, capsys):
    from simulations.__main__ import main

    out, _, _ = base_sweep
    arrays, _ = sweep.load_sweep(out)
    loss = arrays["diagnostics.loss"]
    plot = tmp_path / "summary.png"
    assert main(["sweep", "summary", str(out), "--metric", "diagnostics.loss", "--by", "init_scale", "--json",
                 "--plot", str(plot)]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("\n") == 1  # exactly one JSON object
    summary = json.loads(captured.out)
    assert summary["metric"] == "diagnostics.loss" and summary["by"] == "init_scale"
    assert [row["value"] for row in summary["rows"]] == [0.3, 0.4]
    assert [row["count"] for row in summary["rows"]] == [2, 2]
    for row, points in zip(summary["rows"], (loss[:2], loss[2:])):
        assert row["mean"] == float(np.mean(points)) and row["std"] == float(np.std(points, ddof=1))
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["sweep", "summary", str(out), "--metric", "diagnostics.converged", "--by", "seed"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:4] == ["seed", "mean", "std", "n"]
    assert [line.split()[0] for line in lines[1:]] == ["0", "1"]
    assert all(float(line.split()[1]) == 1.0 for line in lines[1:])  # every point converged


@pytest.mark.parametrize("flags, expected", [
    (["--metric", "measured", "--by", "init_scale"], "scalar"),
    (["--metric", "nosuch", "--by", "init_scale"], "nosuch"),
    (["--metric", "diagnostics.loss", "--by", "depth"], "depth"),
    (["--metric", "diagnostics.loss"], "--by"),
])
def test_summary_bad_input_is_one_line_exit_2(base_sweep, flags, expected, capsys):
    from simulations.__main__ import main

    out, _, _ = base_sweep
    assert main(["sweep", "summary", str(out), *flags]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], captured.err


BAD_CLI = {
    "unknown-experiment": (["nosuch", "--out", "{out}"], "EXPERIMENT"),
    "unknown-field": (["weighting", "--out", "{out}", "--set", "depthh=1,2"], "depthh"),
    "vector-via-set": (["weighting", "--out", "{out}", "--set", "pos_cov=0.9,0.5"], "--set-vector"),
    "scalar-via-vector": (["weighting", "--out", "{out}", "--set-vector", "depth=1,2"], "scalar"),
    "bad-int": (["weighting", "--out", "{out}", "--set", "depth=1.5"], "depth"),
    "invalid-value": (["weighting", "--out", "{out}", "--set", "depth=0,1"], "depth"),
    "no-equals": (["weighting", "--out", "{out}", "--set", "depth"], "FIELD=VALUE"),
    "seeds-zero": (["weighting", "--out", "{out}", "--seeds", "0"], "seeds"),
    "seed-twice": (["weighting", "--out", "{out}", "--seeds", "2", "--set", "seed=1"], "seed"),
    "field-twice": (["weighting", "--out", "{out}", "--set", "depth=1", "--set", "depth=2"], "depth"),
    "unknown-preset": (["weighting", "--out", "{out}", "--preset", "nosuch"], "preset"),
    "preset-overlap": (["weighting", "--out", "{out}", "--preset", "default", "--set-vector",
                        "pos_cov=0.9,0.5,0.8"], "pos_cov"),
    "chunk-zero": (["weighting", "--out", "{out}", "--chunk-size", "0"], "chunk_size"),
    "too-many-devices": (["weighting", "--out", "{out}", "--devices", "99"], "--devices"),
    "non-integer-seeds": (["weighting", "--out", "{out}", "--seeds", "two"], "--seeds"),
    "missing-out": (["weighting"], "--out"),
    "bad-placement": (["weighting", "--out", "{out}", "--placement", "everywhere"], "--placement"),
    "bad-engine": (["weighting", "--out", "{out}", "--engine", "ray"], "--engine"),
    "scheduler-without-dask": (["weighting", "--out", "{out}", "--scheduler", "tcp://localhost:8786"], "--engine"),
    "workers-zero": (["weighting", "--out", "{out}", "--engine", "dask", "--workers", "0"], "workers"),
    "workers-and-scheduler": (["weighting", "--out", "{out}", "--engine", "dask", "--workers", "2", "--scheduler",
                               "tcp://localhost:8786"], "workers"),
    "negative-retries": (["weighting", "--out", "{out}", "--engine", "dask", "--retries", "-1"], "retries"),
}


@pytest.mark.parametrize("name", sorted(BAD_CLI))
def test_bad_input_is_one_line_exit_2(name, tmp_path, capsys, monkeypatch):
    from simulations.__main__ import main

    monkeypatch.setenv("PROJECTION_HEAD_JAX_CACHE", "off")
    flags, expected = BAD_CLI[name]
    argv = ["sweep"] + [flag.format(out=tmp_path / "never") for flag in flags]
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse errors
        code = exit_.code
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], captured.err
    assert not (tmp_path / "never" / sweep.MANIFEST).exists()


# ----------------------------------------------------------------------------------------------
# Subprocesses: the CLI contract, SIGKILL and rerun, and 4 forced CPU devices.


@pytest.fixture(scope="module")
def environment(tmp_path_factory):
    """The caller's environment with a private compilation cache (never the user's home)."""
    env = dict(os.environ)
    env["PROJECTION_HEAD_JAX_CACHE"] = str(tmp_path_factory.mktemp("jax-cache"))
    return env


def _sweep_cli(flags, env, **kwargs):
    return subprocess.run([sys.executable, "-m", "simulations", "sweep", *flags], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S, **kwargs)


def _check_files(directory: Path) -> int:
    """Every visible file is complete (loads); returns the number of finished points."""
    done = 0
    for path in directory.iterdir():
        if path.name.startswith("."):
            continue
        if path.suffix == ".npz":
            with np.load(path) as data:
                assert data.files, path
        else:
            assert path.suffix == ".json", path
            record = json.loads(path.read_text())
            if path.name != sweep.MANIFEST and path.with_suffix(".npz").exists():
                done += len(record["points"])
    return done


def _kill_and_finish(flags, out: Path, env, kills: int, window: float, rng: random.Random):
    """SIGKILL the sweep ``kills`` times at random moments, checking the files each time; finish it."""
    for _ in range(kills):
        process = subprocess.Popen([sys.executable, "-m", "simulations", "sweep", *flags], cwd=REPO, env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, window))
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        if out.exists():
            _check_files(out)
    before = _check_files(out) if out.exists() else 0
    final = _sweep_cli(flags + ["--json"], env)
    assert final.returncode == 0, final.stderr
    summary = json.loads(final.stdout)
    assert summary["skipped"] == before  # nothing that was finished is lost or recomputed
    assert summary["completed"] + summary["skipped"] == summary["total"]
    return summary


@pytest.fixture(scope="module")
def reference_run(environment, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "reference"
    flags = CLI_AXES + ["--seeds", "4", "--chunk-size", "2", "--out", str(out)]
    started = time.perf_counter()
    result = _sweep_cli(flags + ["--json"], environment)
    return out, flags, result, time.perf_counter() - started


def test_cli_json_contract(reference_run, environment):
    out, flags, result, _ = reference_run
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"completed": 8, "skipped": 0, "total": 8}
    assert result.stdout.count("\n") == 1  # exactly one JSON object; progress went to stderr
    again = _sweep_cli(flags + ["--json"], environment)
    assert json.loads(again.stdout) == {"completed": 0, "skipped": 8, "total": 8}
    refused = _sweep_cli(CLI_AXES + ["--seeds", "3", "--out", str(out), "--json"], environment)
    assert refused.returncode == 2 and refused.stdout == ""
    assert len(refused.stderr.strip().splitlines()) == 1 and "different arguments" in refused.stderr


def test_sigkill_then_rerun_is_bit_identical(reference_run, environment, tmp_path):
    reference, flags, _, seconds = reference_run
    out = tmp_path / "killed"
    flags = [flag if flag != str(reference) else str(out) for flag in flags]
    rng = random.Random(7)
    # Kill within the reference run's duration (it included the compilation the others load).
    _kill_and_finish(flags, out, environment, kills=3, window=seconds, rng=rng)
    assert _equal(sweep.load_sweep(out)[0], sweep.load_sweep(reference)[0])
    assert not any(path.name.endswith(".tmp") for path in out.iterdir())


@pytest.mark.slow
def test_sigkill_many_times_larger_sweep(environment, tmp_path):
    flags = CLI_AXES + ["--set", "weight_decay=0,0.02", "--seeds", "3", "--chunk-size", "2"]
    reference, out = tmp_path / "reference", tmp_path / "killed"
    started = time.perf_counter()
    assert _sweep_cli(flags + ["--out", str(reference)], environment).returncode == 0
    seconds = time.perf_counter() - started
    _kill_and_finish(flags + ["--out", str(out)], out, environment, kills=8, window=seconds,
                     rng=random.Random(11))
    assert _equal(sweep.load_sweep(out)[0], sweep.load_sweep(reference)[0])


FOUR_DEVICES = textwrap.dedent("""
    import json, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np
    from simulations import sweep
    from simulations.experiments import weighting
    out, placements = sys.argv[1], sys.argv[2].split(",")
    spans = set()
    make_place = sweep.run.make_place  # the module run_sweep calls it from
    def recording(sharding):
        place = make_place(sharding)
        def wrapped(tree):
            placed = place(tree)
            spans.update(len(leaf.sharding.device_set) for leaf in jax.tree_util.tree_leaves(placed))
            return placed
        return wrapped
    sweep.run.make_place = recording
    arrays = {}
    for name, devices, placement in [("one", 1, "split")] + [(p, 4, p) for p in placements]:
        summary = sweep.run_sweep(weighting.EXPERIMENT, f"{out}/{name}", axes=[("init_scale", [0.3, 0.4])], seeds=2,
                                  quick=True, chunk_size=4, devices=jax.devices()[:devices],
                                  placement=placement, progress=False)
        assert summary.devices == devices, summary
        arrays[name] = sweep.load_sweep(f"{out}/{name}")[0]
    report = {"device_count": jax.device_count(), "spans": sorted(spans)}
    for name in placements:
        report[name + "_equal"] = all(np.array_equal(arrays["one"][k], arrays[name][k]) for k in arrays["one"])
        report[name + "_max_weight_diff"] = float(np.max(np.abs(arrays["one"]["measured"] - arrays[name]["measured"])))
    print(json.dumps(report))
""")


def _four_devices(placements, environment, tmp_path):
    env = {**environment, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    result = subprocess.run([sys.executable, "-c", FOUR_DEVICES, str(tmp_path), ",".join(placements)], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["device_count"] == 4
    return report


@pytest.mark.slow
def test_four_devices_split_is_bit_identical_to_one(environment, tmp_path):
    """Split placement: each of 4 forced CPU devices runs one point; equal to one device, bit for bit."""
    report = _four_devices(["split"], environment, tmp_path)
    assert report["split_equal"], report
    assert report["spans"] == [1]  # every placed leaf lives on exactly one device


@pytest.mark.slow
def test_four_devices_sharded_agrees_with_one(environment, tmp_path):
    """Sharded placement: one GSPMD program whose leaves span all 4 devices; last-bits agreement."""
    report = _four_devices(["sharded"], environment, tmp_path)
    assert 4 in report["spans"], report
    assert report["sharded_max_weight_diff"] < SHARDED_WEIGHT_ATOL, report


# ----------------------------------------------------------------------------------------------
# The dask engine: a LocalCluster of two worker processes, one of which is killed mid-sweep.

def _exit_on_first_try(marker: str, run_batch, configs, *, place=None):
    """run_batch that kills its worker process (os._exit) the first time it sees point (0.4, seed 0)."""
    if configs[0].init_scale == 0.4 and configs[0].seed == 0:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))  # exactly one process dies, once
        except FileExistsError:
            pass
        else:
            os._exit(17)
    return run_batch(configs, place=place)


def test_dask_engine_survives_a_killed_worker_and_is_bit_identical(reference_run, environment, monkeypatch):
    """Two worker processes, the reference sweep's 4 chunks; a worker dies inside a chunk, which is
    rerun; the arrays and the manifest equal the in-process engine's (the CLI reference run), bit for bit."""
    pytest.importorskip("distributed")
    import functools

    import cloudpickle

    reference, _, result, _ = reference_run
    assert result.returncode == 0, result.stderr
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import this file
    # The workers' compile cache: the reference run's, so they load its programs instead of compiling.
    monkeypatch.setenv("PROJECTION_HEAD_JAX_CACHE", environment["PROJECTION_HEAD_JAX_CACHE"])
    out = reference.parent / "dask"
    marker = reference.parent / "killed"
    dying = WEIGHTING._replace(run_batch=functools.partial(_exit_on_first_try, str(marker), WEIGHTING.run_batch))
    started = time.perf_counter()
    summary = sweep.run_sweep(dying, out, axes=AXES, seeds=4, quick=True, chunk_size=2, engine="dask", workers=2,
                              progress=False)
    seconds = time.perf_counter() - started
    assert marker.exists()  # a worker process did die inside a chunk
    assert summary.as_json() == {"completed": 8, "skipped": 0, "total": 8} and summary.chunks_run == 4
    assert _equal(sweep.load_sweep(out)[0], sweep.load_sweep(reference)[0])
    assert (out / sweep.MANIFEST).read_text() == (reference / sweep.MANIFEST).read_text()
    assert not any(path.name.endswith(".tmp") for path in out.iterdir())
    # Either engine finishes the other's sweep: the engine is not one of the sweep's arguments.
    again = sweep.run_sweep(WEIGHTING, reference, axes=AXES, seeds=4, quick=True, engine="dask", workers=1,
                            progress=False)
    assert again.as_json() == {"completed": 0, "skipped": 8, "total": 8}
    print(f"dask sweep with a killed worker: {seconds:.1f} s")


def test_dask_engine_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="engine"):
        sweep.run_sweep(WEIGHTING, tmp_path / "a", engine="ray", progress=False)
    with pytest.raises(ValueError, match="dask"):
        sweep.run_sweep(WEIGHTING, tmp_path / "b", workers=2, progress=False)
    with pytest.raises(ValueError, match="process"):
        sweep.run_sweep(WEIGHTING, tmp_path / "c", engine="dask", process_index=0, process_count=2, progress=False)
    with pytest.raises(ValueError, match="retries"):
        sweep.run_sweep(WEIGHTING, tmp_path / "d", engine="dask", retries=-1, progress=False)
    assert not any((tmp_path / name).exists() for name in "abcd")


@pytest.mark.slow
def test_cli_dask_engine_json_contract(reference_run, environment, tmp_path):
    """``--engine dask --workers 2``: the same one-line JSON, then a bit-identical sweep directory."""
    pytest.importorskip("distributed")
    reference, flags, _, _ = reference_run
    out = tmp_path / "dask"
    flags = [flag if flag != str(reference) else str(out) for flag in flags]
    result = _sweep_cli(flags + ["--engine", "dask", "--workers", "2", "--json"], environment)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout) == {"completed": 8, "skipped": 0, "total": 8}
    assert result.stdout.count("\n") == 1
    assert _equal(sweep.load_sweep(out)[0], sweep.load_sweep(reference)[0])
