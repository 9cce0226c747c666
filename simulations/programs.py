"""Jitted programs kept on disk as exported StableHLO, so a later process skips tracing them.

JAX's compilation cache (:func:`simulations.runtime.enable_compilation_cache`) saves XLA's work,
but every process still traces and lowers each program before it can look the compiled one up:
about 2 s for one gradient-flow solve (diffrax builds a large program), which is most of what a
warm command pays after start-up. :func:`stored_jit` is :func:`jax.jit` that also saves the
lowered program (:mod:`jax.export`) next to the compilation cache and, in a later process, loads
it instead of tracing (a few milliseconds); the compilation cache then supplies the executable.

A stored program is used only when everything it was built from matches: the source of every
module of the ``simulations`` and ``theory`` packages (one fingerprint), the versions of JAX and
jaxlib, the backend, the float64 setting, equinox's check mode (``EQX_ON_ERROR``), the lowering of
the random-number hash (:mod:`simulations.threefry`), the static
arguments and the shapes and dtypes of the others. Static arguments must be plain values (numbers,
strings, tuples, frozen dataclasses of them) or functions defined at module level in those two
packages; a program with any other static argument (a lambda, a function of a script) is traced
as usual, every time, and so is a program JAX cannot export, such as a flow recording a
trajectory while equinox raises its errors from a host callback (entry points switch that off:
:func:`simulations.runtime.configure_entry_point`). Results are those of the plain jitted
function, bit for bit. JAX saves a program whose outputs hold NamedTuples only if their types are
registered for serialization; the output types are therefore named in a ``.types`` file beside
the program, and a later process registers them before loading it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import inspect
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

from simulations import threefry
from simulations.runtime import EQUINOX_ERRORS_ENV

#: Packages whose module-level functions may be static arguments of a stored program; their
#: source is part of every stored program's key.
PACKAGES = ("simulations", "theory")
#: Sub-directory of the compilation cache holding the exported programs.
STORE_DIRECTORY = "exported"

_lock = threading.Lock()


@functools.cache
def _source_fingerprint() -> str:
    """SHA-256 over the source files of :data:`PACKAGES` (any edit invalidates every stored program)."""
    return source_fingerprint(Path(__file__).resolve().parent.parent)


def source_fingerprint(root: Path) -> str:
    """SHA-256 over the names and contents of the ``.py`` files of :data:`PACKAGES` under ``root``."""
    digest = hashlib.sha256()
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _static_token(value) -> str | None:
    """A stable text for a static argument, or None when it cannot key a stored program."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)
    if isinstance(value, tuple):
        parts = [_static_token(item) for item in value]
        return None if None in parts else "(" + ",".join(parts) + ")"
    if dataclasses.is_dataclass(value) and not isinstance(value, type) and value.__dataclass_params__.frozen:
        parts = [_static_token(getattr(value, field.name)) for field in dataclasses.fields(value)]
        return None if None in parts else f"{type(value).__module__}.{type(value).__qualname__}({','.join(parts)})"
    if inspect.isfunction(value) or inspect.isclass(value):
        module, name = getattr(value, "__module__", ""), value.__qualname__
        if module.split(".")[0] in PACKAGES and "<" not in name:
            return f"{module}.{name}"
    return None


def _store() -> Path | None:
    """Where exported programs live: beside the compilation cache, or None when it is off."""
    cache = jax.config.jax_compilation_cache_dir
    return Path(cache) / STORE_DIRECTORY if cache else None


def _aval_token(tree) -> str:
    """Tree structure, shapes, dtypes and weak types of the dynamic arguments."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    typeof = getattr(jax, "typeof", None) or jax.api_util.shaped_abstractify  # older JAX lacks typeof
    return str(treedef) + ";" + ";".join(str(typeof(leaf)) for leaf in leaves)


class StoredJit:
    """:func:`jax.jit` of ``fun`` whose lowered programs persist across processes (see module doc)."""

    def __init__(self, fun: Callable, static_argnums: tuple[int, ...] = (), static_argnames: tuple[str, ...] = ()):
        self.fun = fun
        self.static_argnums = tuple(static_argnums)
        self.static_argnames = tuple(static_argnames)
        self.jitted = jax.jit(fun, static_argnums=self.static_argnums, static_argnames=self.static_argnames)
        self.name = f"{fun.__module__}.{fun.__qualname__}"
        self.storable = _static_token(fun) is not None  # its source is part of the fingerprint
        self._programs: dict[tuple[str, str], Callable] = {}
        functools.update_wrapper(self, fun)

    def __call__(self, *args, **kwargs):
        store = _store()
        static = [args[i] for i in self.static_argnums]
        named = dict(sorted(kwargs.items()))
        tokens = [_static_token(value) for value in static]
        for name, value in named.items():  # any keyword that is not static makes the call a plain jitted one
            token = _static_token(value) if name in self.static_argnames else None
            tokens.append(None if token is None else f"{name}={token}")
        dynamic = tuple(arg for i, arg in enumerate(args) if i not in self.static_argnums)
        traced = any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(dynamic))
        if store is None or not self.storable or None in tokens or traced:  # (under vmap or grad: plain jit)
            return self.jitted(*args, **kwargs)
        key = "|".join([self.name, *tokens, _aval_token(dynamic), str(bool(jax.config.jax_enable_x64)),
                        jax.default_backend(), jax.__version__, _jaxlib_version(), _equinox_errors(),
                        f"threefry={threefry.installed()}", _source_fingerprint()])
        memo = (str(store), key)  # a program loaded here is also saved to a store named later
        program = self._programs.get(memo)
        if program is None:
            with _lock:
                program = self._programs.get(memo) or self._load_or_export(store, key, static, named, dynamic)
                self._programs[memo] = program
        return program(*dynamic)

    def _merged(self, static, dynamic) -> list:
        """The full argument list from the static and the dynamic arguments."""
        dynamic, merged = list(dynamic), []
        for index in range(len(static) + len(dynamic)):
            merged.append(static[self.static_argnums.index(index)] if index in self.static_argnums else dynamic.pop(0))
        return merged

    def _load_or_export(self, store: Path, key: str, static, named, dynamic) -> Callable:
        """The stored program for ``key``, exported first if missing or unreadable; kept in this
        process only if JAX cannot serialize it (an output node type it does not know), and the
        plain jitted function if JAX cannot export it (a host callback)."""
        from jax import export

        _register(_named_tuple_types(dynamic))
        path = store / (hashlib.sha256(key.encode()).hexdigest() + ".jaxexport")
        plain = lambda *args: self.jitted(*self._merged(static, args), **named)  # noqa: E731
        if path.with_suffix(".unexportable").exists():
            return plain
        exported = None
        if path.exists():
            try:
                _register(_load_types(path.with_suffix(".types")))
                exported = export.deserialize(bytearray(path.read_bytes()))
            except Exception:  # a truncated or foreign file: export again and replace it
                exported = None
        if exported is None:
            try:
                bound = lambda *args: self.fun(*self._merged(static, args), **named)  # noqa: E731
                exported = export.export(jax.jit(bound))(*dynamic)
            except Exception:  # JAX cannot export it (a host callback, say): say so for later processes
                store.mkdir(parents=True, exist_ok=True)
                path.with_suffix(".unexportable").touch()
                return plain
            outputs = _named_tuple_types(
                jax.tree_util.tree_unflatten(exported.out_tree, [None] * exported.out_tree.num_leaves))
            _register(outputs)
            try:
                blob = exported.serialize()
            except ValueError:  # an output node type JAX cannot serialize: use it here, export it again later
                return jax.jit(exported.call)
            store.mkdir(parents=True, exist_ok=True)
            # The output NamedTuple types are named beside the program: a later process registers
            # them before it can load it (the input types it registers from the arguments).
            if outputs:
                names = sorted(f"{kind.__module__}:{kind.__qualname__}" for kind in outputs)
                _write_atomically(path.with_suffix(".types"), "\n".join(names).encode())
            _write_atomically(path, blob)
        return jax.jit(exported.call)


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a private temporary file, so no reader sees half a file."""
    partial = path.with_suffix(f"{path.suffix}.{os.getpid()}.{threading.get_ident()}.tmp")
    partial.write_bytes(data)
    os.replace(partial, path)


_registered: set[type] = set()


def _named_tuple_types(tree) -> set[type]:
    """Every NamedTuple type in ``tree`` (nested tuples, lists and dicts)."""
    found, stack = set(), [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, tuple):
            if hasattr(type(node), "_fields"):
                found.add(type(node))
            stack.extend(node)
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            stack.extend(node.values())
    return found


def _register(kinds) -> None:
    """Make NamedTuple types serializable (needed to save and to load programs holding them)."""
    from jax import export

    for kind in kinds:
        if kind in _registered:
            continue
        try:
            export.register_namedtuple_serialization(kind, serialized_name=_type_name(kind))
        except ValueError:  # registered already (by an earlier import of this module)
            pass
        _registered.add(kind)


def _type_name(kind: type) -> str:
    """The name a NamedTuple type is serialized under."""
    return f"{kind.__module__}.{kind.__qualname__}"


def _load_types(path: Path) -> list[type]:
    """The NamedTuple types a ``.types`` file names (none if absent). Modules of :data:`PACKAGES`
    are imported; any other must be imported already (an optimizer's state type, say)."""
    if not path.exists():
        return []
    kinds = []
    for name in path.read_text().split():  # module:qualified.name
        module_name, _, qualname = name.partition(":")
        if module_name.split(".")[0] in PACKAGES:
            kind = importlib.import_module(module_name)
        else:
            kind = sys.modules[module_name]  # KeyError: not loadable here, the caller exports again
        for part in qualname.split("."):
            kind = getattr(kind, part)
        kinds.append(kind)
    return kinds


def stored_jit(fun: Callable | None = None, *, static_argnums: tuple[int, ...] | int = (),
               static_argnames: tuple[str, ...] | str = ()) -> Any:
    """:func:`jax.jit` that keeps its lowered programs on disk (static arguments by position or by
    keyword; other keyword arguments make a call a plain jitted one)."""
    if isinstance(static_argnums, int):
        static_argnums = (static_argnums,)
    if isinstance(static_argnames, str):
        static_argnames = (static_argnames,)
    if fun is None:
        return functools.partial(stored_jit, static_argnums=static_argnums, static_argnames=static_argnames)
    return StoredJit(fun, static_argnums, static_argnames)


def _equinox_errors() -> str:
    """Equinox's run-time check mode (diffrax's checks are compiled into the programs)."""
    config = sys.modules.get("equinox._config")  # the mode equinox read at import, if imported
    return str(getattr(config, EQUINOX_ERRORS_ENV, None) or os.environ.get(EQUINOX_ERRORS_ENV, "raise"))


@functools.cache
def _jaxlib_version() -> str:
    from jaxlib import version

    return version.__version__
