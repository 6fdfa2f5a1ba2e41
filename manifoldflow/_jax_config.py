"""Process-wide JAX settings for high-precision solves: float64 and a persistent
compilation cache."""

import os
import pathlib


def cache_dir() -> pathlib.Path:
    """`$MANIFOLDFLOW_CACHE_DIR`, else `$XDG_CACHE_HOME/manifoldflow/jax`, else
    `~/.cache/manifoldflow/jax`."""
    if "MANIFOLDFLOW_CACHE_DIR" in os.environ:
        return pathlib.Path(os.environ["MANIFOLDFLOW_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "manifoldflow" / "jax"


def configure_jax(*, cache: bool = True) -> None:
    """Enable float64 and (with `cache`) JAX's persistent compilation cache in
    `cache_dir()`, so that a second process skips compiling what the first compiled."""
    import jax

    jax.config.update("jax_enable_x64", True)
    if cache:
        path = cache_dir()
        path.mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(path))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
