"""Checkpoints of a long `solve_flow`: the loop state after a window (solver and
controller state, records, noise-floor history), the kept states, and the window
schedule, so that a killed solve continues where it was and ends exactly as the
uninterrupted one.

A checkpoint carries a fingerprint of everything that determines the solve: the
program itself (the lowered text of the compiled loop, which holds the model's code,
its closures and constants, the solver and every shape and dtype), the manifold's
arrays and structure, the start, every option, and the versions of manifoldflow and
JAX. No change of model code, lambda, closure or dependency goes unseen. It is written atomically (a temporary file, then a rename) and
read back only if it is whole (its own SHA-256) and its fingerprint is the solve's:
otherwise `InputError`, never a silent use.
"""

import hashlib
import io
import json
import os
import pathlib
import re
from typing import Any

import equinox as eqx
import jax
import numpy as np

from ._errors import InputError


_MAGIC = b"manifoldflow-checkpoint 1\n"
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _digest(tree: Any) -> str:
    """A SHA-256 of a pytree: its structure (static fields included, memory
    addresses left out) and the bytes, shapes and dtypes of its array leaves."""
    leaves, structure = jax.tree.flatten(tree)
    hasher = hashlib.sha256(_ADDRESS.sub("", str(structure)).encode())
    for leaf in leaves:
        if isinstance(leaf, (np.ndarray, jax.Array, np.generic)):
            array = np.asarray(leaf)
            hasher.update(f"{array.dtype}{array.shape}".encode())
            hasher.update(np.ascontiguousarray(array).tobytes())
        else:
            hasher.update(_ADDRESS.sub("", repr(leaf)).encode())
    return hasher.hexdigest()


def fingerprint(
    manifold, theta0, options: dict, programs: tuple[str, ...]
) -> dict[str, str]:
    """The parts that must match for a checkpoint to continue a solve; `programs`:
    the lowered texts of the programs the solve runs."""
    from . import __version__

    hasher = hashlib.sha256()
    for text in programs:
        hasher.update(_ADDRESS.sub("", text).encode())
    return dict(
        program=hasher.hexdigest(),
        manifold=_digest(manifold),
        theta0=_digest(np.asarray(theta0)),
        options=_digest(options),
        versions=f"manifoldflow {__version__}, jax {jax.__version__}",
    )


class Checkpoint(eqx.Module):
    """Where a windowed solve stands: `state` (the loop state; a windowed solve
    draws its progress on the host, so no meter's handle is in it), `attempts` (the
    next window's size), and `host`: the NumPy arrays the host keeps (the step
    records taken off the device, the kept states)."""

    state: Any
    attempts: int
    host: dict[str, np.ndarray]


def check_path(path: pathlib.Path) -> None:
    """`InputError` unless a checkpoint can be written at `path` (and read, if one
    is there), before any work."""
    if path.is_dir():
        raise InputError(
            f"The checkpoint path {path} is a folder.",
            fix=f"Give the path of a file in it, e.g. checkpoint={str(path / 'solve.mfck')!r}.",
            parameter="checkpoint",
        )
    folder = path.parent
    if not folder.is_dir():
        raise InputError(
            f"The checkpoint path {path}: its folder {folder} does not exist.",
            fix="Create the folder first, or choose a path in an existing one.",
            parameter="checkpoint",
        )
    probe = folder / f".{path.name}.{os.getpid()}.probe"
    try:
        probe.write_bytes(b"")
        probe.unlink()
        if path.exists():
            with open(path, "rb") as file:
                file.read(1)
    except OSError as error:
        raise InputError(
            f"The checkpoint {path} cannot be written or read "
            f"({error.strerror or error}).",
            fix="Choose a path in a folder you can write to.",
            parameter="checkpoint",
        ) from None


def write(path: pathlib.Path, marks: dict[str, str], checkpoint: Checkpoint) -> None:
    """Write `checkpoint` to `path` atomically."""
    state = io.BytesIO()
    eqx.tree_serialise_leaves(state, checkpoint.state)
    host = io.BytesIO()
    np.savez(host, **checkpoint.host)
    payload = state.getvalue() + host.getvalue()
    header = dict(
        fingerprint=marks,
        attempts=checkpoint.attempts,
        steps=int(checkpoint.state.num_accepted),
        state_bytes=len(state.getvalue()),
        host_bytes=len(host.getvalue()),
        sha256=hashlib.sha256(payload).hexdigest(),
    )
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as file:
        file.write(_MAGIC + json.dumps(header).encode() + b"\n" + payload)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def read(path: pathlib.Path, marks: dict[str, str], like_state) -> Checkpoint:
    """The checkpoint at `path` for the solve of fingerprint `marks` (`like_state`:
    a state of its structure); `InputError` if it is not whole or is of another
    solve."""
    data = path.read_bytes()
    try:
        if not data.startswith(_MAGIC):
            raise ValueError("it does not start as a manifoldflow checkpoint")
        line_end = data.index(b"\n", len(_MAGIC))
        header = json.loads(data[len(_MAGIC) : line_end])
        payload = data[line_end + 1 :]
        size = header["state_bytes"] + header["host_bytes"]
        if len(payload) != size:
            raise ValueError(f"{len(payload)} of its {size} bytes of data are there")
        if hashlib.sha256(payload).hexdigest() != header["sha256"]:
            raise ValueError("its data do not match their SHA-256")
    except (ValueError, KeyError, TypeError) as error:
        raise InputError(
            f"The checkpoint {path} is truncated or corrupt ({error}): it cannot be "
            "used.",
            fix="Delete it to start the solve again.",
            parameter="checkpoint",
        ) from None
    differs = [k for k in marks if header["fingerprint"].get(k) != marks[k]]
    if differs:
        names = dict(
            program="the program (the model's code, a closure or constant in it, the "
            "solver, or a library's code)",
            manifold="the manifold (model or data)",
            theta0="the start",
            options="the options",
            versions=f"the versions ({header['fingerprint'].get('versions')} then, "
            f"{marks['versions']} now)",
        )
        raise InputError(
            f"The checkpoint {path} is of another solve: "
            f"{', '.join(names[k] for k in differs)} differ. It is not used.",
            fix="Delete it (or choose another path) to start this solve afresh.",
            parameter="checkpoint",
        )
    state_bytes = io.BytesIO(payload[: header["state_bytes"]])
    state = eqx.tree_deserialise_leaves(state_bytes, like_state)
    with np.load(io.BytesIO(payload[header["state_bytes"] :])) as arrays:
        host = {name: arrays[name] for name in arrays.files}
    return Checkpoint(state, int(header["attempts"]), host)
