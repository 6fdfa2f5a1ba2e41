"""The error raised for bad input."""


class InputError(ValueError):
    """Bad input to the library: wrong shapes, non-finite data, an empty or singular
    manifold, options out of range. The message names what is wrong and the fix.

    A subclass of `ValueError`; the command line turns it into a one-line message and
    exit code 2, where any other exception is a bug and keeps its traceback.

    **Fields:** `problem` (what is wrong), `fix` (what to change, in Python terms;
    may be empty), `parameter` (the name of the argument at fault, or `None`), so
    that a front end can say the fix in its own terms.
    """

    def __init__(self, problem: str, *, fix: str = "", parameter: str | None = None):
        super().__init__(f"{problem} {fix}".strip())
        self.problem = problem
        self.fix = fix
        self.parameter = parameter
