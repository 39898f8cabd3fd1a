"""Salesforce REST adapter (write-back, reads for re-sync) and the outbox drain."""

from kpi_pipeline.adapters.salesforce.rest import SalesforceRest
from kpi_pipeline.core.salesforce_rest import RecordUpdate, SalesforceError, SaveError, UpdateReport

__all__ = ["RecordUpdate", "SalesforceError", "SalesforceRest", "SaveError", "UpdateReport"]
