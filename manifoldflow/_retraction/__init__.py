r"""Retractions onto $\Gamma$: multiplier form (chord, Newton), Gauss--Newton, and the
gradient-flow map."""

from .base import (
    AbstractRetraction as AbstractRetraction,
    RetractionSolution as RetractionSolution,
)
from .gauss_newton import GaussNewtonRetraction as GaussNewtonRetraction
from .gradient_flow import (
    GradientFlowRetraction as GradientFlowRetraction,
    GradientFlowRetractionSolution as GradientFlowRetractionSolution,
)
from .multiplier import (
    AbstractMultiplierRetraction as AbstractMultiplierRetraction,
    ChordRetraction as ChordRetraction,
    NewtonRetraction as NewtonRetraction,
)
