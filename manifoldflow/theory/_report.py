"""Typed records of theory checks: one [`manifoldflow.theory.Check`][] per statement,
collected in a [`manifoldflow.theory.Report`][]."""

import math
import textwrap
from typing import Any

import equinox as eqx
import numpy as np


def _to_float(x) -> float | None:
    """A Python float (from a NumPy/JAX scalar, int or float), `None` kept."""
    return None if x is None else float(x)


def _wrapped(text: str, indent: str, width: int = 100) -> str:
    """`text` in lines of at most `width` characters, each indented."""
    return textwrap.fill(
        text,
        width=width,
        initial_indent=indent,
        subsequent_indent=indent,
        break_on_hyphens=False,
    )


def _format(x: float | None) -> str:
    return "-" if x is None else f"{x:.3e}"


class Check(eqx.Module):
    r"""One comparison of a measured number with a theory's prediction or bound.

    **Fields:**

    - `name`: a short identifier, e.g. `"theorem_3_3_optimum"`.
    - `claim`: one sentence: what is measured, what it is compared with, and the
      lemma or theorem it comes from.
    - `measured`: the number computed from the solution.
    - `prediction`: the theory's value of the same quantity as `measured`; `None` when
      the theory gives only a bound.
    - `lower`, `upper`: the check passes iff `lower <= measured <= upper`; `None` is no
      bound on that side.
    - `applicable`: whether the statement's hypotheses hold for this problem.
    - `passed`: the outcome; `None` when not applicable.
    - `note`: why the check does not apply, or what else a reader should know.

    Build it with [`manifoldflow.theory.Check.compare`][] or
    [`manifoldflow.theory.Check.not_applicable`][].
    """

    name: str
    claim: str
    measured: float | None
    prediction: float | None
    lower: float | None
    upper: float | None
    applicable: bool
    passed: bool | None
    note: str = ""

    @classmethod
    def compare(
        cls,
        name: str,
        claim: str,
        measured,
        *,
        prediction=None,
        lower=None,
        upper=None,
        condition: bool | np.bool_ = True,
        note: str = "",
    ) -> "Check":
        """An applicable check: passes iff `condition` holds and `measured` is finite
        and within `[lower, upper]` (a missing side is no bound).

        `condition` carries what the interval cannot say: a strict inequality, or a
        bound that holds per data point while the row shows the maximum.
        """
        measured, lower, upper = map(_to_float, (measured, lower, upper))
        passed = (
            bool(condition)
            and measured is not None
            and math.isfinite(measured)
            and (lower is None or lower <= measured)
            and (upper is None or measured <= upper)
        )
        return cls(
            name=name,
            claim=claim,
            measured=measured,
            prediction=_to_float(prediction),
            lower=lower,
            upper=upper,
            applicable=True,
            passed=passed,
            note=note,
        )

    @classmethod
    def not_applicable(
        cls, name: str, claim: str, reason: str, *, measured=None, prediction=None
    ) -> "Check":
        """A check whose hypotheses do not hold; `reason` (required) says why."""
        if not reason:
            raise ValueError(
                f"Check {name!r}: a check that does not apply needs a reason."
            )
        return cls(
            name=name,
            claim=claim,
            measured=_to_float(measured),
            prediction=_to_float(prediction),
            lower=None,
            upper=None,
            applicable=False,
            passed=None,
            note=reason,
        )

    @property
    def result(self) -> str:
        """`"PASS"`, `"FAIL"` or `"n/a"`."""
        if not self.applicable:
            return "n/a"
        return "PASS" if self.passed else "FAIL"

    def bound_text(self) -> str:
        """The bounds as text: `"<= 1.200e-09"`, `">= 9.500e-01"`,
        `"[-1.000e-15, 1.200e-09]"` or `"-"`."""
        if self.lower is not None and self.upper is not None:
            return f"[{_format(self.lower)}, {_format(self.upper)}]"
        if self.upper is not None:
            return f"<= {_format(self.upper)}"
        if self.lower is not None:
            return f">= {_format(self.lower)}"
        return "-"

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict, with `bound_text` and `result`."""
        return dict(
            name=self.name,
            claim=self.claim,
            measured=self.measured,
            prediction=self.prediction,
            lower=self.lower,
            upper=self.upper,
            bound_text=self.bound_text(),
            applicable=self.applicable,
            passed=self.passed,
            result=self.result,
            note=self.note,
        )


class Report(eqx.Module):
    """The checks of one solution against a theory, with named summary figures.

    **Fields:**

    - `checks`: the [`manifoldflow.theory.Check`][]s, in the order they are reported.
    - `figures`: named scalar summaries (`float` or `None`), e.g. `"R_star"`.
    """

    checks: tuple[Check, ...]
    figures: dict[str, float | None]

    @property
    def passed(self) -> bool:
        """Whether every applicable check passed (checks that do not apply are
        ignored)."""
        return not self.failed()

    def failed(self) -> list[Check]:
        """The applicable checks that failed."""
        return [c for c in self.checks if c.applicable and not c.passed]

    def __getitem__(self, name: str) -> Check:
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(
            f"No check named {name!r}; the checks are "
            f"{', '.join(c.name for c in self.checks)}."
        )

    def to_dict(self) -> dict[str, Any]:
        """`checks` (a list of [`manifoldflow.theory.Check.to_dict`][]), `figures` and
        `passed`, JSON-ready."""
        return dict(
            checks=[c.to_dict() for c in self.checks],
            figures=dict(self.figures),
            passed=self.passed,
        )

    def table(self) -> str:
        """A text table `check | measured | prediction | bound | result`; under each
        row the claim, and the note when there is one, wrapped at 100 columns."""
        header = ("check", "measured", "prediction", "bound", "result")
        rows = [
            (
                c.name,
                _format(c.measured),
                _format(c.prediction),
                c.bound_text(),
                c.result,
            )
            for c in self.checks
        ]
        widths = [max(len(r[k]) for r in (header, *rows)) for k in range(4)]

        def line(row):
            name, *numbers, result = row
            cells = [name.ljust(widths[0])]
            cells += [x.rjust(w) for x, w in zip(numbers, widths[1:])]
            return " | ".join([*cells, result])

        lines = [line(header), "-" * (sum(widths) + 3 * 4 + 6)]
        for check, row in zip(self.checks, rows):
            lines.append(line(row))
            lines.append(_wrapped(check.claim, "    "))
            if check.note:
                lines.append(_wrapped(f"note: {check.note}", "    "))
        return "\n".join(lines)
