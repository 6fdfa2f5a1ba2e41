"""Convex programs that the flows' limits are checked against, by an independent
route: basis pursuit (an LP, SciPy's HiGHS) and the minimum nuclear norm (an SDP, by
cvxpy, the `convex` extra). Their solvers are imported when called."""

from .basis_pursuit import (
    basis_pursuit as basis_pursuit,
    l1_minimiser_spread as l1_minimiser_spread,
)
from .nuclear_norm import minimum_nuclear_norm as minimum_nuclear_norm
