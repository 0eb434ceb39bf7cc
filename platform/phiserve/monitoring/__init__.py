"""Model monitoring: reference statistics at export, drift, missing data, decisions and outcome
feedback at serving, exposed in /metrics (see :mod:`phiserve.monitoring.monitor`)."""

from phiserve.monitoring.monitor import Monitor, MonitoringHook
from phiserve.monitoring.outcomes import ROUTE as OUTCOME_ROUTE
from phiserve.monitoring.outcomes import OutcomeHandlers
from phiserve.monitoring.reference import (
    IMAGE_STATISTICS,
    MonitoringBlock,
    image_statistics,
    reference_block,
)

__all__ = [
    "IMAGE_STATISTICS",
    "OUTCOME_ROUTE",
    "Monitor",
    "MonitoringBlock",
    "MonitoringHook",
    "OutcomeHandlers",
    "image_statistics",
    "reference_block",
]
