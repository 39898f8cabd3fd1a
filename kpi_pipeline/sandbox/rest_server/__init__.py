"""The sandbox org's Salesforce REST server: a real HTTP server on loopback.

It speaks the parts of the REST API that the pipeline uses, in Salesforce's shapes, so the
production client (``kpi_pipeline.adapters.salesforce.rest`` over simple-salesforce, and the JWT flow
in ``kpi_pipeline.adapters.auth.jwt``) is the code under test:

* ``POST /services/oauth2/token``: the JWT bearer flow; verifies the RS256 signature against
  the connected app's certificate and the ``iss``/``sub``/``aud``/``exp`` claims.
* ``POST /services/data/vNN.N/sobjects/<Type>`` (create: 201 ``{"id", "success", "errors"}``)
  and ``GET|PATCH|DELETE /services/data/vNN.N/sobjects/<Type>/<Id>`` (PATCH and DELETE: 204)
  for Lead, Task and EmailMessage; a DELETE moves the record to the recycle bin
* ``PATCH /services/data/vNN.N/composite/sobjects`` (sObject Collections update, <= 200)
* ``GET /services/data/vNN.N/sobjects/<Type>/describe``: the sObject's fields (name, type,
  ``compoundFieldName``) as Salesforce describes them, custom fields included
* ``GET /services/data/vNN.N/query?q=`` for the SOQL subset the pipeline issues, with
  ``nextRecordsUrl`` paging (``GET .../query/<cursor>``); that includes ``LeadHistory``
  (``SELECT <fields> FROM LeadHistory WHERE Field = 'Owner' AND LeadId IN (..) ORDER BY
  CreatedDate``), answered from the owner changes the store recorded (``field_history=False``:
  an org where the object is not available, INVALID_TYPE)
* ``POST /services/data/vNN.N/actions/standard/emailSimple``

Writes go through ``RecordStore.create_record``/``update_record``/``delete_record`` with
``change_origin`` ``com/salesforce/api/rest/NN.N;client=<Sforce-Call-Options client>`` and
the access token's user as ``commitUser`` (static tokens: the integration user), so they show
up as the CDC CREATE/UPDATE/DELETE events a real org publishes; the pipeline recognises its
own updates as echoes by that origin.

Refused writes change nothing and publish nothing. They get Salesforce's error list
(``[{"message", "errorCode", "fields"}]``): an unknown field is 400 INVALID_FIELD ("No such
column 'Foo' on sobject of type Lead"), a value of the wrong type 400 JSON_PARSER_ERROR, a
malformed id in a reference field 400 MALFORMED_ID, a read-only field 400
INVALID_FIELD_FOR_INSERT_UPDATE, a create without a required field (Lead: LastName, Company;
EmailMessage: Status) 400 REQUIRED_FIELD_MISSING, an unknown or unsupported sObject or record
id 404 NOT_FOUND, a record already in the recycle bin 404 ENTITY_IS_DELETED. Like a real org,
a create without ``OwnerId`` gives Lead and Task records to the calling user.

Faults (``RunningRestServer.faults``): REQUEST_LIMIT_EXCEEDED, UNABLE_TO_LOCK_ROW, HTTP 500
or dropped connections, expired sessions, and a delay between applying an update and
answering it (``delay_updates``; ``kpi-pipeline sandbox serve`` arms it from
``KPI_SANDBOX_REST_UPDATE_DELAY_SECONDS``).

Where it lives: ``app`` routes requests to the endpoints ``oauth``, ``sobjects`` and
``query`` (all over ``app_state``), with ``describe``, ``soql`` (the query parser),
``record_values`` (checks and REST shapes of record values), ``responses`` (Salesforce's
answer and error shapes) and ``faults``; ``server`` is the HTTP plumbing and
``connected_app`` the JWT flow's app. This package exposes what callers start and configure.
"""

from __future__ import annotations

from kpi_pipeline.sandbox.rest_server.app import RestApp
from kpi_pipeline.sandbox.rest_server.connected_app import ConnectedApp, derived_user_id
from kpi_pipeline.sandbox.rest_server.faults import RestFaults
from kpi_pipeline.sandbox.rest_server.responses import RecordedRequest
from kpi_pipeline.sandbox.rest_server.server import (
    DEFAULT_INTEGRATION_USER_ID,
    RunningRestServer,
    start_rest_server,
)

__all__ = [
    "DEFAULT_INTEGRATION_USER_ID",
    "ConnectedApp",
    "RecordedRequest",
    "RestApp",
    "RestFaults",
    "RunningRestServer",
    "derived_user_id",
    "start_rest_server",
]
