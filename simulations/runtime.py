"""Process-level JAX settings for entry points (CLI, figures, bench); never applied at import."""

from __future__ import annotations

import functools
import mmap
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax

#: Environment variable overriding where compiled programs are cached across processes.
CACHE_ENV = "PROJECTION_HEAD_JAX_CACHE"
#: Equinox's run-time check mode (read once, when equinox is first imported) and the value entry
#: points default it to.
EQUINOX_ERRORS_ENV, ENTRY_POINT_EQUINOX_ERRORS = "EQX_ON_ERROR", "nan"
#: The XLA option entry points set (see :func:`configure_xla_cpu`) and its setting.
CPU_EMITTER_OPTION, ENTRY_POINT_CPU_EMITTERS = "xla_cpu_use_fusion_emitters", "false"


def enable_compilation_cache(directory: str | os.PathLike | None = None) -> Path:
    """Cache compiled XLA programs on disk so a second run skips compilation.

    A single weighting run spends most of its wall time compiling the solver (seconds) and
    little integrating; the persistent cache removes that from every run after the first. Its
    ``exported/`` sub-directory holds the traced programs of :mod:`simulations.programs`, which
    a later run loads instead of tracing.
    Default location: $PROJECTION_HEAD_JAX_CACHE or ~/.cache/projection-head-theory/jax.
    """
    path = Path(directory or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "projection-head-theory" / "jax")
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    # Every program, however quick to compile: a warm command recompiled ~1 s of small programs
    # at JAX's default threshold (the README's weighting example: 5.6-5.8 s warm instead of 6.7-7.4 s).
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def configure_xla_cpu() -> bool:
    """Have XLA's CPU compiler generate fused loops with its classic emitters; call before JAX runs anything.

    XLA reads ``XLA_FLAGS`` when JAX starts its CPU backend (the first computation), and child
    processes inherit it. With ``--xla_cpu_use_fusion_emitters=false`` the programs here compile
    and run faster (measured on 2 cores, JAX 0.10.2: the supervised experiment's two quick
    programs compiled in 2.7-3.0 s each instead of 3.8 s and 5.2 s, the nonlinear experiment's
    minibatch training ran 27% faster, all 17 figures took 113 s instead of 141 s). Minibatch
    training agrees to the last place (the supervised, pixel and nonlinear-decodability figures'
    arrays are identical, the nonlinear-knobs figure's R^2 differ by at most 4e-16); gradient
    flows differ in the last digits of their arithmetic (relative 1e-14), which a flow through
    long plateaus carries further (up to 3e-6 in the trajectories figure, whose markers sit 7e-3
    from theory). Nothing is set when ``XLA_FLAGS`` already names the option (set it to ``true``
    to keep XLA's default), or when the installed jaxlib does not know it (XLA stops a process
    that passes an unknown option).

    Returns:
        Whether ``XLA_FLAGS`` now asks for the classic emitters.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if CPU_EMITTER_OPTION in flags:
        return f"{CPU_EMITTER_OPTION}={ENTRY_POINT_CPU_EMITTERS}" in flags
    if not _jaxlib_knows(CPU_EMITTER_OPTION):
        return False
    os.environ["XLA_FLAGS"] = f"{flags} --{CPU_EMITTER_OPTION}={ENTRY_POINT_CPU_EMITTERS}".strip()
    return True


@functools.cache
def _jaxlib_knows(option: str) -> bool:
    """Whether the option's name is in jaxlib's compiled libraries (XLA's options are fields of a
    message whose names the library holds); a few milliseconds, largest library first."""
    import jaxlib

    libraries = sorted(Path(jaxlib.__file__).parent.rglob("*.so"), key=lambda path: -path.stat().st_size)
    needle = option.encode()
    for library in libraries:
        with open(library, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if data.find(needle) >= 0:
                return True
    return False


def usable_cores() -> set[int] | None:
    """The cores this process may run on, or None where the system does not say (no affinity call)."""
    return set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


def worker_threads() -> int:
    """Threads that batched work spreads over on a CPU: the cores this process may use.

    XLA runs programs dispatched from several threads to one CPU device at the same time, so
    independent points (:class:`simulations.flow.FlowOptions` ``batching="points"``,
    :func:`simulations.experiment.run_split`) use every core with a single compiled program
    (measured on 2 cores: two threads 1.9x one; two forced CPU devices do as well but compile
    every program once per device, since the compilation cache keys CPU programs by device).
    """
    cores = usable_cores()
    return len(cores) if cores is not None else os.cpu_count() or 1


def thread_map(function: Callable, items: Sequence, workers: int) -> list:
    """``[function(item) for item in items]`` on up to ``workers`` threads, results in order.

    The caller's float64 setting, which JAX keeps per thread, is carried into the threads; an
    exception is raised for the first item (in order) that raised one.
    """
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [function(item) for item in items]
    x64 = bool(jax.config.jax_enable_x64)

    def call(item):
        with jax.enable_x64(x64):
            return function(item)

    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:  # XLA releases the GIL while it runs
        return list(pool.map(call, items))


def configure_entry_point(*, precision: str = "float64", cache: bool = True) -> None:
    """What every entry point does first: precision (float64 by default), the compile cache,
    equinox's run-time checks as NaNs rather than host callbacks (unless ``EQX_ON_ERROR`` is set),
    XLA's classic CPU loop emitters (:func:`configure_xla_cpu`: faster, the same numbers up to
    rounding) and the faster-compiling CPU lowering of the random-number hash
    (:mod:`simulations.threefry`: the same random numbers bit for bit).

    diffrax checks a recording grid (``gradient_flow(..., times=...)``) with an equinox check,
    which by default raises from a host callback; a program holding a host callback can neither
    be stored (:mod:`simulations.programs`) nor kept in the compilation cache, so every process
    compiled such flows again (the trajectories figure: 17 s warm, 3 s with this setting). The
    flow validates the grid on the host first, so the check cannot fire (with ``nan`` a failed
    check would return NaNs instead of raising). Library code leaves the setting alone: only
    entry points, which own their process, change it.
    """
    from simulations import threefry

    configure_xla_cpu()
    os.environ.setdefault(EQUINOX_ERRORS_ENV, ENTRY_POINT_EQUINOX_ERRORS)
    threefry.install()
    jax.config.update("jax_enable_x64", precision == "float64")
    if cache and os.environ.get(CACHE_ENV) != "off":
        enable_compilation_cache()
