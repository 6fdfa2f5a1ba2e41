import os
import tempfile

import jax
import pytest


jax.config.update("jax_enable_x64", True)

# One compilation cache for the whole suite, in a private, empty folder (never the
# user's ~/.cache/manifoldflow/jax): the test process and every command it starts
# (MANIFOLDFLOW_CACHE_DIR), so that a program compiled once is loaded, not compiled
# again, by the many short processes the tests start. JAX keys it by the program.
# Made once, by the first process (with pytest-xdist: the controller, before it
# starts the workers, which inherit it).
if "MANIFOLDFLOW_SUITE_CACHE" not in os.environ:
    os.environ["MANIFOLDFLOW_SUITE_CACHE"] = tempfile.mkdtemp(
        prefix="manifoldflow-cache-"
    )
CACHE = os.environ["MANIFOLDFLOW_SUITE_CACHE"]
os.environ["MANIFOLDFLOW_CACHE_DIR"] = CACHE
jax.config.update("jax_compilation_cache_dir", CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _memory_mappings() -> int:
    try:
        with open("/proc/self/maps") as maps:
            return sum(1 for _ in maps)
    except OSError:  # not Linux
        return 0


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    # Each compiled XLA:CPU program holds a few hundred memory mappings until it is
    # released: a process that keeps every program of the suite passes Linux's default
    # limit of 65,530 (vm.max_map_count), and the next compilation crashes. Released
    # between modules once past a third of it (a module adds a few thousand), so that
    # the modules still share the programs compiled before.
    yield
    if _memory_mappings() > 20_000:
        jax.clear_caches()


def pytest_sessionfinish(session, exitstatus):
    # An in-process command sets the cache folder from MANIFOLDFLOW_CACHE_DIR: the
    # suite's, unless a test pointed it elsewhere and left it there.
    assert jax.config.jax_compilation_cache_dir == CACHE, (
        "a test left JAX's compilation cache in another folder: "
        f"{jax.config.jax_compilation_cache_dir}"
    )
