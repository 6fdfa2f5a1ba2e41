r"""Riemannian optimisation of the sharpness on $\Gamma$: `minimise_sharpness`, its
solvers (gradient descent with Armijo backtracking, the trust region with
Steihaug--Toint truncated CG) and the verdicts on the point reached."""

from .base import (
    AbstractRiemannianMinimiser as AbstractRiemannianMinimiser,
    Iterate as Iterate,
    StepRecord as StepRecord,
)
from .gradient_descent import RiemannianGradientDescent as RiemannianGradientDescent
from .lanczos import (
    tangent_lanczos as tangent_lanczos,
    TangentSpectrum as TangentSpectrum,
)
from .minimise import (
    minimise_sharpness as minimise_sharpness,
    MinimiseRecords as MinimiseRecords,
    MinimiseSolution as MinimiseSolution,
    MinimumAtInfinity as MinimumAtInfinity,
)
from .trust_region import RiemannianTrustRegion as RiemannianTrustRegion
from .verdict import (
    classify_point as classify_point,
    tangent_spectrum as tangent_spectrum,
    Verdict as Verdict,
)
