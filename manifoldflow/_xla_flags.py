"""A process setting made before JAX starts its CPU backend: the workaround for a
deadlock of jaxlib < 0.11.2 on machines with few cores.

jaxlib's CPU LAPACK kernels (Cholesky, QR, eigh, triangular solves, ...) split a large
batch into chunks on XLA's intra-op thread pool and block until the chunks are done.
When XLA's concurrency-optimised scheduler runs as many such calls at once as the pool
has threads, inside a while loop, every thread waits for chunks that no thread is left
to run, and the process hangs at 0% CPU. A batched flow solve on a 2-core machine
does exactly that (two Cholesky factorisations per step, a few hundred members).
jaxlib 0.11.2 builds without the parallel path.

So `XLA_FLAGS` gets `--xla_cpu_enable_concurrency_optimized_scheduler=false` (the
other scheduler runs them one after the other; no measurable cost in these solves),
unless it already names that flag (the user's choice wins) or jaxlib is new enough.
It acts only if JAX's CPU backend has not started yet in this process.
"""

import importlib.metadata
import os
import re


FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"


def _affected(version: str) -> bool:
    numbers = [int(n) for n in re.findall(r"\d+", version)[:3]]
    return tuple(numbers + [0] * (3 - len(numbers))) < (0, 11, 2)


def apply() -> None:
    try:
        version = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if _affected(version) and FLAG not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {FLAG}=false".strip()
