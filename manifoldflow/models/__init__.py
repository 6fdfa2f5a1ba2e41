"""Models with structured fast paths."""

from .activations import (
    AbstractActivation as AbstractActivation,
    activation_from_name as activation_from_name,
    Cube as Cube,
    CubeBeta as CubeBeta,
    CubicLinear as CubicLinear,
)
from .datasets import (
    Dataset as Dataset,
    DATASETS as DATASETS,
    load_dataset as load_dataset,
)
from .deep_linear import (
    deep_linear_data as deep_linear_data,
    DeepLinearNet as DeepLinearNet,
    DeepLinearRisk as DeepLinearRisk,
    end_to_end as end_to_end,
    gaussian_init as gaussian_init,
    residual_init as residual_init,
    risk as risk,
)
from .sparse import (
    QuadraticLinearModel as QuadraticLinearModel,
    sparse_init as sparse_init,
    sparse_recovery_data as sparse_recovery_data,
)
from .two_layer import (
    initialise_on_manifold as initialise_on_manifold,
    two_layer_data as two_layer_data,
    TwoLayerManifold as TwoLayerManifold,
    TwoLayerNet as TwoLayerNet,
)
