r"""Simulators of the discrete optimisers (label-noise GD and SGD, GD, SAM, 1-SAM)
whose small-step limit [`manifoldflow.solve_flow`][] solves, on a manifold's
residuals $F(\theta) = f_\theta(X) - y$, with $L = \frac1n\sum_i F_i^2$ unless
stated otherwise.

**The constant $c$.** Near $\Gamma$, a step $\theta \leftarrow \theta - \eta(\nabla
L_{\rm dyn} + \zeta)$ whose noise has covariance $\mathbb E\,\zeta\zeta^\top = c'
\nabla^2 L_{\rm dyn}$ follows, in the time $\tau = \eta^2 k$, the flow $d\theta/d\tau
= -\frac{c'}{4} P_T \nabla \operatorname{Tr}\nabla^2 L_{\rm dyn}$ (Li, Wang, Arora
2022, Corollary 5.2; Gatmiry et al. 2024, Theorem 1.1). On $\Gamma$, $\nabla^2 L_{\rm
dyn} = \kappa \sum_i \nabla F_i \nabla F_i^\top$ for the loss's own curvature
$\kappa$, while the library's $R = \sum_i w_i \|\nabla F_i\|^2$ uses the manifold's
weights $w$ (all equal: $w_i = w$), so $\operatorname{Tr}\nabla^2 L_{\rm dyn} =
(\kappa / w) R$ and the flow of [`manifoldflow.solve_flow`][] needs
`constant` $= c = \frac{c'\kappa}{4w}$:

- full-batch label-noise GD on $\frac1n\sum_i(F_i - \xi_i)^2$, $\xi_i \sim \mathcal
  N(0, \sigma^2)$: $\zeta = -\frac2n\sum_i \xi_i \nabla F_i$ has covariance
  $\frac{4\sigma^2}{n^2}\sum_i \nabla F_i\nabla F_i^\top$, $\kappa = \frac2n$, so
  $c' = \frac{2\sigma^2}{n}$ and $c = \frac{\sigma^2}{n^2 w}$; against the
  default $R$ ($w = \frac2n$, the trace for $L = \frac1n\sum(f-y)^2$): $c =
  \frac{\sigma^2}{2n}$.
- single-sample label-noise SGD of Li, Wang, Arora on $\frac12(F_i + \delta s)^2$, $i$
  uniform, $s = \pm1$: on $\Gamma$, $\zeta = \delta s \nabla F_i$ has covariance
  $\frac{\delta^2}{n}\sum_i\nabla F_i\nabla F_i^\top$, $\kappa = \frac1n$ (the
  expected loss is $\frac1{2n}\sum F_i^2$), so $c' = \delta^2$ and $c =
  \frac{\delta^2}{4nw}$; against the default $R$: $c = \frac{\delta^2}{8}$ ($\frac{
  \delta^2}4$ against the trace for $L = \frac1{2n}\sum(f-y)^2$).
- plain GD has no drift along $\Gamma$; full-batch SAM's limit is a flow of
  $\lambda_{\max}$ on another time scale, 1-SAM's a trace flow on the time scale
  $\eta\rho^2 k$ (Wen, Ma, Li 2023): no `c` is given for these.
"""

from ._simulate import simulate as simulate, SimulationResult as SimulationResult
from ._simulators import (
    AbstractSimulator as AbstractSimulator,
    GradientDescent as GradientDescent,
    LabelNoiseGD as LabelNoiseGD,
    LabelNoiseSGD as LabelNoiseSGD,
    OneSAM as OneSAM,
    SAM as SAM,
)
