"""Routing policy as data: the packaged default policy, its JSON Schema, loading and the CLI."""

from kpi_pipeline.core.policy.calendars import Calendar
from kpi_pipeline.core.policy.load import (
    PolicyError,
    PolicyFault,
    RoutingPolicy,
    default_policy_path,
    load_policy,
    policy_fingerprint,
    validate_policy_file,
)

__all__ = [
    "Calendar",
    "PolicyError",
    "PolicyFault",
    "RoutingPolicy",
    "default_policy_path",
    "load_policy",
    "policy_fingerprint",
    "validate_policy_file",
]
