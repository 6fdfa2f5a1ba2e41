"""Options shared by the experiments that solve a flow, and data loading, with
errors in the words of the command line."""

import argparse
import math
import pathlib

import diffrax
import numpy as np

import manifoldflow as mf

from .._errors import InputError


SOLVERS = {
    "dopri8": "Dopri8",
    "dopri5": "Dopri5",
    "tsit5": "Tsit5",
    "bosh3": "Bosh3",
    "heun": "Heun",
    "kvaerno5": "Kvaerno5",
    "kvaerno3": "Kvaerno3",
}
PROJECTORS = {
    "cholesky": "CholeskyProjector",
    "qr": "QRProjector",
    "cg": "CGProjector",
    "svd": "SVDProjector",
}


def add_flow_options(parser: argparse.ArgumentParser, *, polish: bool = True) -> None:
    """`--t1 --stationarity --solver --rtol --atol --max-steps --projector`, and
    `--polish` unless `polish=False` (it is read by `_polish.polish_end`, not
    `flow_options`)."""
    group = parser.add_argument_group("flow solve")
    group.add_argument("--t1", type=float, default=math.inf, help="end time")
    group.add_argument(
        "--stationarity",
        type=float,
        default=1e-10,
        metavar="EPS",
        help="stop once |P_T grad R| <= EPS",
    )
    group.add_argument(
        "--solver", default="dopri8", choices=sorted(SOLVERS), help="diffrax solver"
    )
    group.add_argument("--rtol", type=float, default=1e-10, help="relative tolerance")
    group.add_argument("--atol", type=float, default=1e-12, help="absolute tolerance")
    group.add_argument(
        "--max-steps",
        type=int,
        default=100_000,
        help="most solver steps attempted (accepted and rejected)",
    )
    group.add_argument(
        "--projector",
        default="cholesky",
        choices=sorted(PROJECTORS),
        help="tangent projection: Cholesky of J J^T, QR of J^T, matrix-free CG, or "
        "SVD (for a rank-deficient J)",
    )
    if not polish:
        return
    group.add_argument(
        "--polish",
        action="store_true",
        help="then minimise R on the manifold from the flow's end (Riemannian trust "
        "region, to --stationarity) and check the polished point too",
    )


def flow_options(args: argparse.Namespace) -> dict:
    """Validated `solve_flow` keyword arguments from `add_flow_options`' options."""

    if not args.t1 > 0:
        raise InputError(f"--t1 must be positive, got {args.t1}.")
    for flag, value in (("--rtol", args.rtol), ("--atol", args.atol)):
        if not (value > 0 and math.isfinite(value)):
            raise InputError(f"{flag} must be a positive number, got {value}.")
    if not (args.stationarity > 0 and math.isfinite(args.stationarity)):
        raise InputError(
            f"--stationarity must be a positive number, got {args.stationarity} (to "
            "run to a time instead, give --t1 and a small --stationarity)."
        )
    if args.max_steps < 1:
        raise InputError(f"--max-steps must be at least 1, got {args.max_steps}.")
    return dict(
        solver=getattr(diffrax, SOLVERS[args.solver])(),
        projector=getattr(mf, PROJECTORS[args.projector])(),
        t1=args.t1,
        stepsize_controller=diffrax.PIDController(rtol=args.rtol, atol=args.atol),
        stationarity=args.stationarity,
        max_steps=args.max_steps,
    )


def progress_meter(progress: bool, refresh_steps: int = 20):
    """The command line's progress bar (`diffrax.TqdmProgressMeter`, redrawn every
    `refresh_steps` steps), or none."""

    if not progress:
        return diffrax.NoProgressMeter()
    return diffrax.TqdmProgressMeter(refresh_steps=refresh_steps)


def positive_sizes(**sizes: int) -> None:
    """Raise `InputError` naming every size option that is not positive."""
    bad = {name: value for name, value in sizes.items() if value < 1}
    if bad:
        listed = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in bad.items())
        raise InputError(f"sizes must be positive integers, got {listed}.")


def load_arrays(path: pathlib.Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The named arrays of an `.npz` file, as float64; `InputError` for a missing file,
    a file that is not `.npz`, missing, complex or non-numeric arrays."""
    if not path.is_file():
        raise InputError(f"--data {path}: no such file.")
    with open(path, "rb") as file:
        magic = file.read(6)
    if not (magic.startswith(b"PK\x03\x04") or magic.startswith(b"\x93NUMPY")):
        kind = (
            "a text file (CSV?)"
            if all(32 <= b < 127 or b in b"\t\r\n" for b in magic)
            else "not a NumPy file"
        )
        raise InputError(
            f"--data {path} is {kind}, not a NumPy .npz archive with arrays "
            f"{', '.join(names)}. Convert it in Python, e.g. for a CSV whose last "
            "column is y: data = numpy.loadtxt(path, delimiter=','); "
            "numpy.savez('data.npz', X=data[:, :-1], y=data[:, -1])."
        )
    try:
        archive = np.load(path)
    except Exception as error:  # any unreadable file: the message names it
        raise InputError(
            f"--data {path} is not a NumPy .npz archive ({type(error).__name__}: "
            f"{error}); write one with numpy.savez(path, X=X, y=y)."
        ) from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise InputError(
            f"--data {path} holds a single array, not an .npz archive with arrays "
            f"{', '.join(names)}; write one with numpy.savez(path, X=X, y=y)."
        )
    with archive:
        missing = [name for name in names if name not in archive.files]
        if missing:
            raise InputError(
                f"--data {path} has no array named {', '.join(missing)}: it must hold "
                f"{', '.join(names)} (found {', '.join(archive.files) or 'none'})."
            )
        arrays = {name: np.asarray(archive[name]) for name in names}
    for name, array in arrays.items():
        if np.iscomplexobj(array) or not np.issubdtype(array.dtype, np.number):
            raise InputError(
                f"--data {path}: {name} must be real numbers, got {array.dtype}."
            )
    return {name: array.astype(float) for name, array in arrays.items()}


def check_seed(seed: int) -> None:
    if not 0 <= seed < 2**32:
        raise InputError(f"--seed must be in [0, 2**32), got {seed}.")


# The command line's own fix for a library error, by the parameter at fault.
_COMMAND_LINE_FIXES = {
    "initial_retraction": "Start closer to the manifold (a smaller --init-scale), "
    "or another --seed.",
    "theta0": "Change --a, --init-scale or --seed.",
    "projector": "Remove the dependent data points, or use --projector svd.",
}


def command_line_error(error: InputError) -> InputError:
    """A library `InputError` with its fix said in the command line's options."""
    fix = _COMMAND_LINE_FIXES.get(error.parameter or "", error.fix)
    return InputError(error.problem, fix=fix, parameter=error.parameter)


def result_text(solution) -> str:
    """How a solve ended, in the command line's words."""
    if solution.result_name == "max_steps_reached":
        return "reached --max-steps before stationarity"
    return solution.message
