"""Routing policy as data: the packaged default policy, its JSON Schema, loading and the CLI."""

from kpi_pipeline.core.policy.calendars import Calendar
from kpi_pipeline.core.policy.load import (
    RoutingPolicy,
    default_policy_path,
    load_policy,
    policy_fingerprint,
    validate_policy_file,
)
from kpi_pipeline.core.policy.validation import PolicyError, PolicyFault

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
