"""The jaxlib < 0.11.2 deadlock of batched LAPACK calls in a while loop on a small
thread pool, and the XLA flag that manifoldflow sets against it on import."""

import os
import subprocess
import sys
import textwrap

from manifoldflow import _xla_flags


# Two independent batched Cholesky factorisations per iteration of a while loop: on a
# 2-core machine, without the flag, this hangs at 0% CPU (jaxlib 0.10.2).
LOOP = textwrap.dedent(
    """
    import manifoldflow  # sets XLA_FLAGS before JAX's backend starts
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    X = jax.random.normal(jax.random.PRNGKey(0), (512, 16, 32))
    A = X @ X.transpose(0, 2, 1)

    def body(carry):
        i, A = carry
        L1, L2 = jnp.linalg.cholesky(A), jnp.linalg.cholesky(A + 1.0)
        return i + 1, A + 1e-3 * (L1 @ L1.mT - L2 @ L2.mT)

    loop = jax.jit(lambda A: jax.lax.while_loop(lambda c: c[0] < 20, body, (0, A)))
    jax.block_until_ready(loop(A))
    print("done")
    """
)


def test_batched_factorisations_in_a_loop_do_not_hang():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run(
        [sys.executable, "-c", LOOP],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.strip() == "done", done.stderr


def test_the_flag_is_added_once_and_a_users_choice_is_kept(monkeypatch):
    monkeypatch.setattr(_xla_flags.importlib.metadata, "version", lambda _: "0.10.2")
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
    _xla_flags.apply()
    _xla_flags.apply()
    assert os.environ["XLA_FLAGS"] == (
        "--xla_force_host_platform_device_count=4 "
        "--xla_cpu_enable_concurrency_optimized_scheduler=false"
    )
    monkeypatch.setenv("XLA_FLAGS", f"{_xla_flags.FLAG}=true")
    _xla_flags.apply()
    assert os.environ["XLA_FLAGS"] == f"{_xla_flags.FLAG}=true"
    monkeypatch.delenv("XLA_FLAGS")
    monkeypatch.setattr(_xla_flags.importlib.metadata, "version", lambda _: "0.11.2")
    _xla_flags.apply()
    assert "XLA_FLAGS" not in os.environ
