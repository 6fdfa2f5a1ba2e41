import os
import tempfile

import jax
import pytest


jax.config.update("jax_enable_x64", True)

# A command run in-process without --no-cache would switch JAX's persistent
# compilation cache on for the rest of the session: give it a private, empty folder
# of its own, never the user's ~/.cache/manifoldflow/jax, whose entries other
# processes may be writing.
os.environ["MANIFOLDFLOW_CACHE_DIR"] = tempfile.mkdtemp(prefix="manifoldflow-cache-")


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
    # Every in-process command passes --no-cache: no test leaves the cache on.
    assert jax.config.jax_compilation_cache_dir is None, (
        "a test switched JAX's compilation cache on (a command without --no-cache)"
    )
