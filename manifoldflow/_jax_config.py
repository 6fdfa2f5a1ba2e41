"""Process-wide JAX settings of the command line: float64, and JAX's persistent
compilation cache (keyed by the compiled program itself) in a private folder.

In Python, both are the user's choice:

```python
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_compilation_cache_dir", "/path/to/a/private/folder")
```
"""

import os
import pathlib
import stat
import sys

import jax


def cache_dir() -> pathlib.Path:
    """The command line's compilation cache folder: `$MANIFOLDFLOW_CACHE_DIR`, else
    `$XDG_CACHE_HOME/manifoldflow/jax`, else `~/.cache/manifoldflow/jax`."""
    if "MANIFOLDFLOW_CACHE_DIR" in os.environ:
        return pathlib.Path(os.environ["MANIFOLDFLOW_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "manifoldflow" / "jax"


def private_folder(path: pathlib.Path) -> str | None:
    """Create `path` (mode 0700) if missing; `None` if it is a folder owned by this
    user that no one else can write to, else why it is not."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.stat()
    except OSError as error:
        return f"cannot create or read it ({error.strerror or error})"
    if not stat.S_ISDIR(info.st_mode):
        return "it is not a folder"
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        return "it belongs to another user"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"others can write to it (mode {stat.S_IMODE(info.st_mode):o})"
    if not os.access(path, os.W_OK | os.X_OK):
        return "it is not writable"
    return None


def configure_jax(*, cache: bool = True) -> None:
    """Enable float64 and, with `cache`, JAX's persistent compilation cache in
    [`cache_dir`][manifoldflow._jax_config.cache_dir]. A folder that cannot be used is
    a one-line warning, and the run goes on without the cache."""
    jax.config.update("jax_enable_x64", True)
    if not cache:
        return
    path = cache_dir()
    problem = private_folder(path)
    if problem is not None:
        print(
            f"manifoldflow: warning: no compilation cache in {path}: {problem} "
            "(set MANIFOLDFLOW_CACHE_DIR, or pass --no-cache)",
            file=sys.stderr,
        )
        return
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
