"""The error raised for bad input."""


class InputError(ValueError):
    """Bad input to the library: wrong shapes, non-finite data, an empty or singular
    manifold, options out of range. The message names what is wrong and the fix.

    A subclass of `ValueError`; the command line turns it into a one-line message and
    exit code 2, where any other exception is a bug and keeps its traceback.
    """
