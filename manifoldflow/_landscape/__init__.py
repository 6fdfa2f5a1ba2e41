"""Losses and Hessians off the manifold: gradient flow and descent on a loss, and the
Hessian's products, trace and largest eigenvalue."""

from .hessian import (
    EigenEstimate as EigenEstimate,
    hessian_matrix as hessian_matrix,
    hessian_max_eigenvalue as hessian_max_eigenvalue,
    hessian_trace as hessian_trace,
    hessian_vector_product as hessian_vector_product,
    hutchinson_trace as hutchinson_trace,
    TraceEstimate as TraceEstimate,
)
from .training import (
    descent_converged as descent_converged,
    gradient_descent as gradient_descent,
    gradient_flow as gradient_flow,
    TrainingPath as TrainingPath,
)
