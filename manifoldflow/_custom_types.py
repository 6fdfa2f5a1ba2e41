"""Type aliases shared by the library (checked at test time by jaxtyping + beartype)."""

import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int


RealScalarLike = float | int | Float[ArrayLike, ""] | Int[ArrayLike, ""]
IntScalarLike = int | Int[ArrayLike, ""]
BoolScalarLike = bool | Bool[ArrayLike, ""]
# Host (NumPy) or device (JAX) arrays.
HostOrDevice = Array | np.ndarray
