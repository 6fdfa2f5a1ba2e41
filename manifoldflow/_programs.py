r"""Traced programs kept across Python processes.

JAX's persistent compilation cache skips compiling in a new process, not tracing and
lowering: a solve still re-traces its step loop (about half a second for a small
two-layer net). With the program cache on ([`manifoldflow.enable_caches`][]), the
functions decorated here are exported with `jax.export` on their first call, written
to the cache folder, and on later calls in any process loaded and run instead of
traced.

A program is keyed by everything that determines its trace: the function, the static
part of its arguments (pickled: functions and classes by module and name, numbers by
value), the shapes, dtypes and tree structure of its array arguments, the versions of
Python, JAX, jaxlib and of the third-party packages whose objects appear in the
arguments, the source of manifoldflow, the source files of the other modules whose
objects appear in the arguments (a user's model), float64 mode and the backend.

Anything that cannot be keyed this way is traced as usual: a static argument that does
not pickle (a lambda, a local function), a module without a source file (a notebook
cell), a program that `jax.export` cannot serialise (host callbacks). An edit to a
helper module that the arguments do not reference (a function called by a user's
model but defined in another file) is not seen: clear the cache folder after such
edits, or keep the program cache off.
"""

import functools
import hashlib
import importlib.metadata
import io
import os
import pathlib
import pickle
import re
import sys
import warnings
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.tree_util as jtu


# Bump when the file format or the key changes.
_FORMAT = 1
# Packages identified by their version rather than by their source files.
_VERSIONED = frozenset(
    {"jax", "jaxlib", "equinox", "diffrax", "lineax", "optimistix", "numpy", "scipy"}
)


class _Settings:
    directory: pathlib.Path | None = None


_settings = _Settings()
# Programs loaded or exported in this process (None: this key is traced as usual).
_loaded: dict[str, Callable | None] = {}
_source_hashes: dict[tuple, str] = {}
_keys: dict[tuple, str | None] = {}


def set_program_directory(directory: pathlib.Path | None) -> None:
    """Keep programs in `directory` (created if missing); `None` turns the cache off."""
    if directory is not None:
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
    _settings.directory = directory
    _loaded.clear()
    _keys.clear()


def persistent_jit(function: Callable) -> Callable:
    """`eqx.filter_jit(function)`, whose traced program is kept across processes while
    the program cache is on. Positional arguments only."""
    jitted = eqx.filter_jit(function)

    @functools.wraps(function)
    def call(*args):
        directory = _settings.directory
        if directory is None:
            return jitted(*args)
        dynamic, static = eqx.partition(args, eqx.is_array)
        leaves, in_tree = jtu.tree_flatten(dynamic)
        if any(isinstance(x, jax.core.Tracer) for x in leaves):
            return jitted(*args)  # called under a transformation
        key = _memoised_key(function, static, dynamic, leaves, in_tree)
        if key is None:
            return jitted(*args)
        if key not in _loaded:
            _loaded[key] = _load(directory, key) or _export(
                directory, key, function, static, in_tree, leaves
            )
        program = _loaded[key]
        if program is None:
            return jitted(*args)
        return program(leaves)

    return call


class _Pickler(pickle.Pickler):
    """Pickles Equinox's placeholder for absent fields by name (it is compared by
    identity on unflattening) and records the modules of the objects it meets."""

    def __init__(self, file):
        super().__init__(file, protocol=5)
        self.modules: set[str] = set()

    def persistent_id(self, obj):
        if obj is _missing():
            return "equinox-missing"
        kind = type(obj)
        self.modules.add(kind.__module__)
        if isinstance(obj, type) or callable(obj):
            module = getattr(obj, "__module__", None)
            if isinstance(module, str):
                self.modules.add(module)
        return None


class _Unpickler(pickle.Unpickler):
    def persistent_load(self, pid):
        if pid == "equinox-missing":
            return _missing()
        raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")


@functools.cache
def _missing():
    from equinox._module._flatten import MISSING

    return MISSING


def _dumps(obj) -> tuple[bytes, set[str]]:
    buffer = io.BytesIO()
    pickler = _Pickler(buffer)
    pickler.dump(obj)
    return buffer.getvalue(), pickler.modules


def _loads(data: bytes):
    return _Unpickler(io.BytesIO(data)).load()


def _memoised_key(function, static, dynamic, leaves, in_tree) -> str | None:
    """`_key`, remembered in this process by what `jax.jit` compares (the static
    leaves by hash and equality) to save pickling on every call."""
    static_leaves, static_tree = jtu.tree_flatten(static)
    avals = tuple((x.shape, x.dtype, _weak(x)) for x in leaves)
    memo = (function, in_tree, avals, static_tree, tuple(static_leaves))
    memo = (jax.config.jax_enable_x64, memo)
    try:
        return _keys[memo]
    except TypeError:  # an unhashable static leaf
        return _key(function, static, dynamic)
    except KeyError:
        _keys[memo] = key = _key(function, static, dynamic)
        return key


def _key(function, static, dynamic) -> str | None:
    """The program's key, or `None` when its arguments cannot be keyed."""
    avals = jtu.tree_map(lambda x: (x.shape, str(x.dtype), _weak(x)), dynamic)
    try:
        data, modules = _dumps(
            (function.__module__, function.__qualname__, static, avals)
        )
    except Exception:  # a lambda, a local function, an unpicklable object
        return None
    modules.add(function.__module__)
    fingerprints = []
    for source in sorted({_source(module) for module in modules}):
        fingerprint = _fingerprint(source)
        if fingerprint is None:
            return None
        fingerprints.append(f"{source}={fingerprint}")
    digest = hashlib.sha256()
    for part in (
        f"format {_FORMAT}",
        f"python {sys.version}",
        f"jax {jax.__version__} jaxlib {_version('jaxlib')}",
        f"x64 {jax.config.jax_enable_x64} backend {_backend()}",
        *fingerprints,
    ):
        digest.update(part.encode())
        digest.update(b"\0")
    digest.update(data)
    return digest.hexdigest()


def _weak(x) -> bool:
    return bool(getattr(x, "weak_type", False))


def _source(module: str) -> str:
    """What identifies a module's code: the standard library, a versioned package,
    manifoldflow, or the module's own file."""
    top = module.partition(".")[0]
    if top in ("builtins", "__future__") or top in sys.stdlib_module_names:
        return "stdlib"
    if top in _VERSIONED or top == "manifoldflow":
        return top
    return f"file:{module}"


def _fingerprint(source: str) -> str | None:
    """A package version or a source hash; `None` for code that cannot be
    identified (a module without a file)."""
    if source == "stdlib":
        return "stdlib"
    if source == "manifoldflow":
        return _source_hash(source, _library_files)
    if source.startswith("file:"):
        module = source.removeprefix("file:")
        return _source_hash(source, functools.partial(_module_files, module))
    return _version(source)


@functools.cache
def _backend() -> str:
    return jax.default_backend()


@functools.cache
def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return str(getattr(sys.modules.get(package), "__version__", None))


def _source_hash(
    name: str, files: Callable[[], list[pathlib.Path] | None]
) -> str | None:
    """A hash of the files' contents, recomputed when one changes size or time."""
    paths = files()
    if paths is None:
        return None
    stamps = []
    for path in paths:
        try:
            stat = path.stat()
        except OSError:
            return None
        stamps.append((str(path), stat.st_mtime_ns, stat.st_size))
    stamp = (name, tuple(stamps))
    if stamp not in _source_hashes:
        digest = hashlib.sha256()
        for path in paths:
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
        _source_hashes[stamp] = digest.hexdigest()
    return _source_hashes[stamp]


@functools.cache
def _library_files() -> list[pathlib.Path]:
    return sorted(pathlib.Path(__file__).parent.rglob("*.py"))


def _module_files(module: str) -> list[pathlib.Path] | None:
    file = getattr(sys.modules.get(module), "__file__", None)
    if file is None or not os.path.isfile(file):
        return None
    return [pathlib.Path(file)]


def _load(directory: pathlib.Path, key: str) -> Callable | None:
    path = directory / f"{key}.program"
    try:
        data = path.read_bytes()
    except OSError:
        return None
    try:
        serialised, out_data = _loads(data)
        exported = jax.export.deserialize(serialised)
        out_tree, out_static = _loads(out_data)
    except Exception:  # a damaged or foreign file: trace instead
        return None
    return _runner(exported, out_tree, out_static)


def _export(directory, key, function, static, in_tree, leaves) -> Callable | None:
    """Trace and export the program, write it, return its runner; `None` if it cannot
    be exported and serialised (then it is traced as usual)."""
    out = {}

    def flat(*flat_leaves):
        args = eqx.combine(jtu.tree_unflatten(in_tree, flat_leaves), static)
        result = function(*args)
        dynamic, result_static = eqx.partition(result, eqx.is_array)
        result_leaves, out["tree"] = jtu.tree_flatten(dynamic)
        out["static"] = result_static
        return result_leaves

    specs = [jax.ShapeDtypeStruct(x.shape, x.dtype, weak_type=_weak(x)) for x in leaves]
    try:
        exported = _export_allowing_custom_calls(jax.jit(flat), specs)
        serialised = exported.serialize()
        out_data, _ = _dumps((out["tree"], out["static"]))
        # The output structure is rebuilt from the file without tracing: it must
        # survive the round trip. What runs is what a later process loads (the same
        # program to compile, so a compilation-cache hit there).
        tree, result_static = _loads(out_data)
        if tree != out["tree"] or not _same(result_static, out["static"]):
            return None
        read_back = jax.export.deserialize(serialised)
        data, _ = _dumps((serialised, out_data))
    except Exception:  # host callbacks, unpicklable outputs: trace as usual
        return None
    path = directory / f"{key}.program"
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    except OSError as error:
        warnings.warn(f"manifoldflow could not write {path}: {error}", stacklevel=3)
    return _runner(read_back, tree, result_static)


def _export_allowing_custom_calls(jitted, specs):
    """`jax.export.export`, allowing the custom calls (LAPACK's QR, ...) that it
    refuses for lack of a compatibility guarantee across jaxlib versions: a program
    here is only ever loaded by the jaxlib version that wrote it."""
    targets: list[str] = []
    for _ in range(16):
        checks = [jax.export.DisabledSafetyCheck.custom_call(t) for t in targets]
        try:
            return jax.export.export(jitted, disabled_checks=checks)(*specs)
        except ValueError as error:
            found = set(re.findall(r"custom_call @(\w+)", str(error))) - set(targets)
            if "custom calls" not in str(error) or not found:
                raise
            targets.extend(sorted(found))
    raise ValueError("too many custom calls without compatibility guarantees")


def _same(a, b) -> bool:
    try:
        return bool(jtu.tree_structure(a) == jtu.tree_structure(b)) and all(
            x == y for x, y in zip(jtu.tree_leaves(a), jtu.tree_leaves(b))
        )
    except Exception:
        return False


def _runner(exported, out_tree, out_static) -> Callable:
    call = jax.jit(exported.call)

    def run(leaves) -> Any:
        result_leaves = call(*leaves)
        return eqx.combine(jtu.tree_unflatten(out_tree, result_leaves), out_static)

    return run
