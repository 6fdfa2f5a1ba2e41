"""Theory checks, one module per paper."""

from . import gatmiry as gatmiry
