"""Models with structured fast paths."""

from .activations import (
    AbstractActivation as AbstractActivation,
    activation_from_name as activation_from_name,
    Cube as Cube,
    CubeBeta as CubeBeta,
    CubicLinear as CubicLinear,
)
from .two_layer import (
    initialise_on_manifold as initialise_on_manifold,
    two_layer_data as two_layer_data,
    TwoLayerManifold as TwoLayerManifold,
    TwoLayerNet as TwoLayerNet,
)
