"""manifoldflow: high-precision sharpness flows on zero-loss manifolds."""

import time as _time


# When the import began (before JAX's): the command line reports its wall time from here.
_IMPORT_STARTED = _time.perf_counter()
__version__ = "0.1.0"

from . import _xla_flags


_xla_flags.apply()  # before JAX's CPU backend starts: see _xla_flags.py

from . import (
    baselines as baselines,
    models as models,
    sgd as sgd,
    sweeps as sweeps,
    theory as theory,
)
from ._batch import solve_flows as solve_flows
from ._errors import InputError as InputError
from ._flow import SharpnessFlow as SharpnessFlow
from ._implicit import newton_krylov as newton_krylov
from ._geometry import FlowEvaluation as FlowEvaluation, Geometry as Geometry
from ._landscape import (
    descent_converged as descent_converged,
    EigenEstimate as EigenEstimate,
    gradient_descent as gradient_descent,
    gradient_flow as gradient_flow,
    hessian_matrix as hessian_matrix,
    hessian_max_eigenvalue as hessian_max_eigenvalue,
    hessian_trace as hessian_trace,
    hessian_vector_product as hessian_vector_product,
    hutchinson_trace as hutchinson_trace,
    TraceEstimate as TraceEstimate,
    TrainingPath as TrainingPath,
)
from ._flow_state import FlowState as FlowState, StepDiagnostics as StepDiagnostics
from ._loss import (
    AbstractLoss as AbstractLoss,
    HalfMeanSquaredLoss as HalfMeanSquaredLoss,
    MeanSquaredLoss as MeanSquaredLoss,
)
from ._manifold import (
    AbstractManifold as AbstractManifold,
    ConstraintManifold as ConstraintManifold,
    Linearisation as Linearisation,
    ZeroLossManifold as ZeroLossManifold,
)
from ._minimise import (
    AbstractRiemannianMinimiser as AbstractRiemannianMinimiser,
    classify_point as classify_point,
    minimise_sharpness as minimise_sharpness,
    MinimiseRecords as MinimiseRecords,
    MinimiseSolution as MinimiseSolution,
    MinimumAtInfinity as MinimumAtInfinity,
    RiemannianGradientDescent as RiemannianGradientDescent,
    RiemannianTrustRegion as RiemannianTrustRegion,
    Verdict as Verdict,
)
from ._noise_floor import (
    AbstractNoiseFloorPolicy as AbstractNoiseFloorPolicy,
    IgnoreNoiseFloor as IgnoreNoiseFloor,
    StopAtNoiseFloor as StopAtNoiseFloor,
    TightenTolerances as TightenTolerances,
)
from ._projection import (
    AbstractProjector as AbstractProjector,
    CGProjector as CGProjector,
    CholeskyProjector as CholeskyProjector,
    QRProjector as QRProjector,
    SVDProjector as SVDProjector,
)
from ._results import RESULTS as RESULTS
from ._retraction import (
    AbstractMultiplierRetraction as AbstractMultiplierRetraction,
    AbstractRetraction as AbstractRetraction,
    ChordRetraction as ChordRetraction,
    GaussNewtonRetraction as GaussNewtonRetraction,
    GradientFlowRetraction as GradientFlowRetraction,
    GradientFlowRetractionSolution as GradientFlowRetractionSolution,
    NewtonRetraction as NewtonRetraction,
    RetractionSolution as RetractionSolution,
)
from ._solution import FlowSolution as FlowSolution, FlowSolutions as FlowSolutions
from ._solve import flow_solve as flow_solve, solve_flow as solve_flow
from ._solver import (
    ProjectedSolver as ProjectedSolver,
    ProjectedSolverState as ProjectedSolverState,
    RetractedInterpolation as RetractedInterpolation,
)
from ._stabilised import StabilisedSharpnessFlow as StabilisedSharpnessFlow
from ._stop import (
    AbstractStopCondition as AbstractStopCondition,
    ConditionStop as ConditionStop,
    gram_condition_estimate as gram_condition_estimate,
    StationarityStop as StationarityStop,
)
