"""Salesforce REST adapter (write-back, reads for re-sync) and the outbox drain."""

from kpi_pipeline.adapters.salesforce.rest import (
    RecordUpdate,
    SalesforceError,
    SalesforceRest,
    SaveError,
    UpdateReport,
)

__all__ = ["RecordUpdate", "SalesforceError", "SalesforceRest", "SaveError", "UpdateReport"]
