"""Process-wide JAX settings for high-precision solves: float64, and the caches that
let a second Python process skip what the first compiled and traced."""

import os
import pathlib


def cache_dir() -> pathlib.Path:
    """The default cache folder: `$MANIFOLDFLOW_CACHE_DIR`, else
    `$XDG_CACHE_HOME/manifoldflow/jax`, else `~/.cache/manifoldflow/jax`."""
    if "MANIFOLDFLOW_CACHE_DIR" in os.environ:
        return pathlib.Path(os.environ["MANIFOLDFLOW_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "manifoldflow" / "jax"


def enable_caches(
    directory: str | os.PathLike | None = None, *, programs: bool = True
) -> pathlib.Path:
    """Keep what is compiled and traced across Python processes.

    Turns on JAX's persistent compilation cache in `directory` and, with `programs`,
    manifoldflow's cache of exported programs in `directory/programs`: the step loop
    and the initialisation of [`manifoldflow.solve_flow`][] are then loaded rather
    than traced in a new process (about half a second per solve set-up on a small
    problem). Call it once at the start of a script; `manifoldflow` commands call it
    unless given `--no-cache`.

    Programs are keyed by shapes, dtypes, options, the versions of Python, JAX and
    the packages involved, the source of manifoldflow and the source files of the
    modules whose objects a solve is given (a user's model): a change in any of them
    traces anew. An edit to a module that those objects only call into is not seen;
    clear `directory/programs` after one, or pass `programs=False`.

    **Arguments:**

    - `directory`: the cache folder (created if missing); default
      [`manifoldflow.cache_dir`][].
    - `programs`: also keep traced programs (`False`: only compiled ones).

    **Returns:** the cache folder.
    """
    import jax

    from ._programs import set_program_directory

    path = cache_dir() if directory is None else pathlib.Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    set_program_directory(path / "programs" if programs else None)
    return path


def configure_jax(*, cache: bool = True) -> None:
    """Enable float64 and (with `cache`) [`manifoldflow.enable_caches`][]."""
    import jax

    jax.config.update("jax_enable_x64", True)
    if cache:
        enable_caches()
