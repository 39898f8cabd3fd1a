"""Data invariants of the lead facts (pure): what the lead_ledger checks assert.

Each function returns the ids of the leads that break it (empty when the ledger is sound).
"""

from __future__ import annotations

import pandas as pd

FIRST_RESPONSE_FIELDS = (
    "First_Response_At__c",
    "First_Response_User__c",
    "First_Response_Source__c",
    "Time_to_First_Response__c",
    "Time_to_First_Response_Business_Minutes__c",
)


def negative_or_early_first_response(frame: pd.DataFrame) -> list[str]:
    """TTFR must be ≥ 0 and the first response no earlier than the lead's creation."""
    ttfr_negative = frame["Time_to_First_Response__c"] < 0
    early = frame["First_Response_At__c"].notna() & (
        frame["First_Response_At__c"] < frame["CreatedDate"]
    )
    return sorted(frame.loc[ttfr_negative | early, "Id"].astype(str))


def incomplete_first_response(frame: pd.DataFrame) -> list[str]:
    """The first-response fields are set together or not at all (no response without a source)."""
    present = frame[list(FIRST_RESPONSE_FIELDS)].notna()
    partial = present.any(axis=1) & ~present.all(axis=1)
    return sorted(frame.loc[partial, "Id"].astype(str))


def routed_without_policy_version(frame: pd.DataFrame) -> list[str]:
    """Every routing decision carries the policy version (and rule) that made it."""
    routed = frame["Routing_Rule__c"].notna()
    unversioned = routed & frame["Routing_Policy_Version__c"].isna()
    return sorted(frame.loc[unversioned, "Id"].astype(str))
