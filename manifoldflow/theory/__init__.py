"""Theory checks: typed records, generic checks of a solution, one module per paper."""

from . import gatmiry as gatmiry, marion_chizat as marion_chizat
from ._report import Check as Check, Report as Report
from ._solution_checks import (
    check_constraint as check_constraint,
    check_ending as check_ending,
    check_stationarity as check_stationarity,
)
