"""What the write-back tests share: the owner rules of the sandbox org's integration user, and
reading a field of a lead back from the org."""

from __future__ import annotations

from kpi_pipeline.app.writeback import OwnerRules
from kpi_pipeline_tests.support.sandbox_org import INTEGRATION_USER_ID, SandboxOrg

RULES = OwnerRules(frozenset({INTEGRATION_USER_ID}), "kpi_pipeline")


def org_value(org: SandboxOrg, lead_id: str, field: str) -> object:
    (row,) = org.rest().query_by_ids("Lead", [field], [lead_id])
    return row[field]
