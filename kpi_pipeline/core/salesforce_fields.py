"""The Lead fields the pipeline writes (CONTRACTS.md §3): one list that code, docs and `sf/` agree on.

A test checks that every field here exists in `sf/force-app/.../objects/Lead/fields/`
with the matching type, and the reverse.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LeadField:
    api_name: str
    sf_type: str  # Metadata API CustomField type
    precision: int | None = None
    scale: int | None = None
    length: int | None = None
    reference_to: str | None = None
    picklist_values: tuple[str, ...] = ()


WRITTEN_LEAD_FIELDS: tuple[LeadField, ...] = (
    LeadField("Owner_Assigned_At__c", "DateTime"),
    LeadField("Assignment_Latency_Minutes__c", "Number", precision=18, scale=2),
    LeadField("First_Response_At__c", "DateTime"),
    LeadField("First_Response_User__c", "Lookup", reference_to="User"),
    LeadField("First_Response_Source__c", "Picklist", picklist_values=("EmailMessage", "Task")),
    LeadField("Time_to_First_Response__c", "Number", precision=18, scale=2),
    LeadField("Template_Recommended__c", "Text", length=255),
    LeadField("Template_Applied__c", "Text", length=255),
    LeadField("Routing_Policy_Version__c", "Text", length=64),
    LeadField("Routing_Rule__c", "Text", length=255),
    # Last, so adding it kept every earlier field's position in the CDC schema.
    LeadField("Time_to_First_Response_Business_Minutes__c", "Number", precision=18, scale=2),
    # The SLA due time in the lead's clock (business hours when its rule or the policy names
    # a calendar): SLA_Breached__c compares against it, so the org and the rollups agree.
    LeadField("SLA_Due_At__c", "DateTime"),
)
WRITTEN_FIELD_NAMES: tuple[str, ...] = tuple(f.api_name for f in WRITTEN_LEAD_FIELDS)
# Standard field also written by routing.
OWNER_FIELD = "OwnerId"
