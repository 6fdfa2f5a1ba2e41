"""The experiments of the command line, one file each, and their registry.

Adding an experiment: a subclass of [`manifoldflow.experiments.AbstractExperiment`][]
in a new file, and one entry in `EXPERIMENTS` below. The command line builds its
subcommands from this registry.
"""

from .base import AbstractExperiment as AbstractExperiment, Outcome as Outcome
from .bench import BenchExperiment as BenchExperiment
from .deep_linear import DeepLinearExperiment as DeepLinearExperiment
from .matrix_sensing import (
    DeepMatrixSensingExperiment as DeepMatrixSensingExperiment,
    MatrixSensingExperiment as MatrixSensingExperiment,
)
from .real_data import RealDataExperiment as RealDataExperiment
from .sgd_vs_flow import SGDVersusFlowExperiment as SGDVersusFlowExperiment
from .sparse_recovery import (
    SparseRecoveryExperiment as SparseRecoveryExperiment,
)
from .two_layer import TwoLayerExperiment as TwoLayerExperiment


EXPERIMENTS: dict[str, AbstractExperiment] = {
    experiment.name: experiment
    for experiment in (
        TwoLayerExperiment(),
        SGDVersusFlowExperiment(),
        DeepLinearExperiment(),
        SparseRecoveryExperiment(),
        MatrixSensingExperiment(),
        DeepMatrixSensingExperiment(),
        RealDataExperiment(),
        BenchExperiment(),
    )
}
