"""Simulators of the discrete optimisers (label-noise GD and SGD, GD, SAM, 1-SAM)
whose small-step limit [`manifoldflow.solve_flow`][] solves."""

from ._simulate import simulate as simulate, SimulationResult as SimulationResult
from ._simulators import (
    AbstractSimulator as AbstractSimulator,
    GradientDescent as GradientDescent,
    LabelNoiseGD as LabelNoiseGD,
    LabelNoiseSGD as LabelNoiseSGD,
    OneSAM as OneSAM,
    SAM as SAM,
)
