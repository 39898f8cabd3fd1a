"""The Salesforce metadata in `sf/`: the real Salesforce CLI converts it, every XML element is
one the Metadata API allows (the type schemas jsforce ships with the CLI), and the Lead fields
match `kpi_pipeline.core.salesforce_fields` exactly, both ways (CONTRACTS.md §3)."""

from __future__ import annotations

import json
import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kpi_pipeline.core.salesforce_fields import WRITTEN_LEAD_FIELDS
from kpi_pipeline_tests.support.metrics_server import require_binary

SF_DIR = Path(__file__).resolve().parents[2] / "sf"
SOURCE = SF_DIR / "force-app" / "main" / "default"
FIELDS_DIR = SOURCE / "objects" / "Lead" / "fields"
NS = "{http://soap.sforce.com/2006/04/metadata}"
SCHEMA_JS = (
    SF_DIR / "node_modules" / "@jsforce" / "jsforce-node" / "lib" / "api" / "metadata" / "schema.js"
)

# Custom fields in sf/ that the pipeline does not write, and why they exist.
REPORT_ONLY_FIELDS = {
    "SLA_Breached__c": "formula 1/0/blank that Lead_TTFR aggregates into SLA Breach % for the dashboard",
}
PLAN_COMPONENTS = {
    "TTFR by Owner",
    "Assignment Latency",
    "SLA Breach %",
    "SLA Breach % by Owner",
    "TTFR by Owner (Business Minutes)",
}


def xml_files() -> list[Path]:
    return sorted(SOURCE.rglob("*-meta.xml"))


def local(tag: str) -> str:
    return tag.removeprefix(NS)


def field_files() -> dict[str, ET.Element]:
    return {
        p.name.split(".")[0]: ET.parse(p).getroot()
        for p in sorted(FIELDS_DIR.glob("*.field-meta.xml"))
    }


def text(element: ET.Element, name: str) -> str | None:
    child = element.find(f"{NS}{name}")
    return child.text if child is not None else None


# --- checks that need no tools ---------------------------------------------------------------
def test_every_metadata_file_is_well_formed_in_the_metadata_namespace() -> None:
    assert len(xml_files()) >= 18
    for path in xml_files():
        root = ET.parse(path).getroot()  # raises on malformed XML
        assert root.tag.startswith(NS), f"{path}: root must be in the Metadata API namespace"


def test_sfdx_project_pins_a_supported_api_version() -> None:
    project = json.loads((SF_DIR / "sfdx-project.json").read_text())
    assert project["packageDirectories"] == [{"path": "force-app", "default": True}]
    assert 64.0 <= float(project["sourceApiVersion"]) <= 66.0


def test_the_cli_pin_and_undici_override_are_in_place() -> None:
    package = json.loads((SF_DIR / "package.json").read_text())
    assert package["devDependencies"]["@salesforce/cli"] == "2.150.6"
    assert package["overrides"]["undici"] == "7.16.0"
    lock = json.loads((SF_DIR / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/@salesforce/cli"]["version"] == "2.150.6"
    assert lock["packages"]["node_modules/undici"]["version"] == "7.16.0"


@pytest.mark.parametrize("expected", WRITTEN_LEAD_FIELDS, ids=lambda f: f.api_name)
def test_every_written_field_exists_with_the_type_the_code_assumes(expected) -> None:
    fields = field_files()
    assert expected.api_name in fields, f"{expected.api_name} missing from {FIELDS_DIR}"
    field = fields[expected.api_name]
    assert text(field, "fullName") == expected.api_name
    assert text(field, "type") == expected.sf_type
    assert text(field, "formula") is None, "a written field cannot be a formula"
    for name, value in (
        ("precision", expected.precision),
        ("scale", expected.scale),
        ("length", expected.length),
    ):
        assert text(field, name) == (str(value) if value is not None else None), (
            f"{expected.api_name}.{name}"
        )
    assert text(field, "referenceTo") == expected.reference_to
    if expected.sf_type == "Lookup":
        assert text(field, "relationshipName"), "a lookup needs a relationshipName"
    values = tuple(
        v.text
        for v in field.iterfind(f"{NS}valueSet/{NS}valueSetDefinition/{NS}value/{NS}fullName")
    )
    assert values == expected.picklist_values
    if expected.picklist_values:
        assert field.find(f"{NS}valueSet/{NS}restricted").text == "true"


def test_every_custom_field_in_sf_is_written_by_the_code_or_documented_report_only() -> None:
    written = {f.api_name for f in WRITTEN_LEAD_FIELDS}
    unexplained = set(field_files()) - written - set(REPORT_ONLY_FIELDS)
    assert not unexplained, (
        f"custom fields neither written nor in REPORT_ONLY_FIELDS: {unexplained}"
    )
    for name in REPORT_ONLY_FIELDS:
        field = field_files()[name]
        assert text(field, "formula"), f"{name} is report-only: it must compute itself (formula)"
        assert "Report-only" in (text(field, "description") or "")


def test_the_permission_set_grants_read_on_every_custom_field() -> None:
    permission_set = ET.parse(
        SOURCE / "permissionsets" / "KPI_Pipeline_Field_Read.permissionset-meta.xml"
    ).getroot()
    readable = {
        text(p, "field")
        for p in permission_set.iterfind(f"{NS}fieldPermissions")
        if text(p, "readable") == "true"
    }
    assert readable == {f"Lead.{name}" for name in field_files()}


def test_reports_and_dashboard_reference_what_exists() -> None:
    fields = set(field_files())
    reports = {
        p.name.split(".")[0]: ET.parse(p).getroot()
        for p in SOURCE.glob("reports/*/*.report-meta.xml")
    }
    assert set(reports) == {"Lead_TTFR", "Assignment_Latency", "Template_Usage", "SLA_By_Owner"}
    for name, report in reports.items():
        tokens = [e.text for e in report.iter() if local(e.tag) in ("field", "column") and e.text]
        for token in tokens:
            if token.startswith("Lead.") and token.endswith("__c"):
                assert token.removeprefix("Lead.") in fields, f"{name} uses unknown field {token}"
    ttfr = reports["Lead_TTFR"]
    assert text(ttfr, "format") == "Summary"
    assert ttfr.find(f"{NS}groupingsDown/{NS}field").text == "OWNER"
    by_owner = reports["SLA_By_Owner"]
    assert text(by_owner, "format") == "Summary"
    assert by_owner.find(f"{NS}groupingsDown/{NS}field").text == "OWNER"
    assert {text(a, "masterLabel") for a in by_owner.iterfind(f"{NS}aggregates")} == {
        "SLA Breach %",
        "Breached",
        "Met",
    }

    dashboard = ET.parse(
        SOURCE / "dashboards" / "KPI_Pipeline_Dashboards" / "TTFR_and_Routing.dashboard-meta.xml"
    )
    components = list(dashboard.getroot().iter(f"{NS}dashboardComponent"))
    assert {text(c, "header") for c in components} == PLAN_COMPONENTS
    for component in components:
        folder, report_name = text(component, "report").split("/")
        assert (SOURCE / "reports" / f"{folder}.reportFolder-meta.xml").exists()
        assert report_name in reports
        aggregates = {
            text(a, "developerName") for a in reports[report_name].iterfind(f"{NS}aggregates")
        }
        column = text(component.find(f"{NS}chartSummary"), "column")
        defined = aggregates | {
            e.text for e in reports[report_name].iterfind(f"{NS}columns/{NS}field")
        }
        assert column in defined, (
            f"dashboard charts {column}, which {report_name} does not aggregate"
        )
    charted = {text(c.find(f"{NS}chartSummary"), "column") for c in components}
    # The business clock is on the dashboard, not only the wall clock.
    assert "Lead.Time_to_First_Response_Business_Minutes__c" in charted


def test_sla_breached_compares_against_the_written_due_time() -> None:
    """The formula judges leads on SLA_Due_At__c (the rollups' business-hours due time),
    which the pipeline writes; its evaluation on org values is in
    kpi_pipeline_tests/app/writeback/test_sla_due_writeback.py."""
    formula = text(field_files()["SLA_Breached__c"], "formula") or ""
    assert "First_Response_At__c > SLA_Due_At__c" in formula
    assert "NOW() > SLA_Due_At__c" in formula
    assert "SLA_Due_At__c" in {f.api_name for f in WRITTEN_LEAD_FIELDS}


# --- checks with the real Salesforce CLI and its Metadata API schemas ---------------------------
def _sf_env() -> dict[str, str]:
    return {
        **os.environ,
        "SF_DISABLE_TELEMETRY": "true",
        "SF_AUTOUPDATE_DISABLE": "true",
        "SF_USE_PROGRESS_BAR": "false",
    }


@pytest.fixture(scope="module")
def installed_cli() -> Path:
    """`npm ci` once per machine: node_modules is reused while it holds the pinned CLI."""
    npm = require_binary("npm", "apt-get install -y nodejs npm")
    require_binary("node", "apt-get install -y nodejs")
    sf = SF_DIR / "node_modules" / ".bin" / "sf"
    installed = SF_DIR / "node_modules" / "@salesforce" / "cli" / "package.json"
    pinned = json.loads((SF_DIR / "package.json").read_text())["devDependencies"]["@salesforce/cli"]
    if not (
        sf.exists()
        and installed.exists()
        and json.loads(installed.read_text())["version"] == pinned
    ):
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=SF_DIR,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return sf


@pytest.fixture(scope="module")
def api_schemas(installed_cli: Path) -> dict:
    script = (
        f"process.stdout.write(JSON.stringify(require({json.dumps(str(SCHEMA_JS))}).ApiSchemas))"
    )
    done = subprocess.run(
        ["node", "-e", script], capture_output=True, text=True, timeout=60, check=True
    )
    schemas = json.loads(done.stdout)
    assert len(schemas) > 800, "unexpectedly few Metadata API types in jsforce's schema"
    return schemas


@pytest.mark.integration
def test_the_salesforce_cli_converts_the_project(installed_cli: Path, tmp_path: Path) -> None:
    out = tmp_path / "mdapi"
    done = subprocess.run(
        [
            str(installed_cli),
            "project",
            "convert",
            "source",
            "--root-dir",
            "force-app",
            "--output-dir",
            str(out),
            "--json",
        ],
        cwd=SF_DIR,
        capture_output=True,
        text=True,
        timeout=300,
        env=_sf_env(),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads(done.stdout)["status"] == 0
    package = ET.parse(out / "package.xml").getroot()
    members = {
        (text(t, "name"), m.text)
        for t in package.iterfind(f"{NS}types")
        for m in t.iterfind(f"{NS}members")
    }
    expected = {("CustomField", f"Lead.{name}") for name in field_files()} | {
        ("PermissionSet", "KPI_Pipeline_Field_Read"),
        ("Report", "KPI_Pipeline_Reports/Lead_TTFR"),
        ("Report", "KPI_Pipeline_Reports/Assignment_Latency"),
        ("Report", "KPI_Pipeline_Reports/Template_Usage"),
        ("Report", "KPI_Pipeline_Reports/SLA_By_Owner"),
        ("Dashboard", "KPI_Pipeline_Dashboards/TTFR_and_Routing"),
    }
    assert expected <= members, expected - members
    assert (
        text(package, "version")
        == json.loads((SF_DIR / "sfdx-project.json").read_text())["sourceApiVersion"]
    )


def _props(schemas: dict, type_name: str) -> dict[str, str | list[str]]:
    """Element name -> declared type, inherited ones first (the WSDL sequence order)."""
    schema = schemas[type_name]
    inherited = _props(schemas, schema["extends"]) if "extends" in schema else {}
    return {**inherited, **schema["props"]}


def _check_element(schemas: dict, element: ET.Element, type_name: str, where: str) -> list[str]:
    problems: list[str] = []
    props = _props(schemas, type_name)
    order = list(props)
    seen: list[str] = []
    for child in element:
        name = local(child.tag)
        path = f"{where}/{name}"
        if name not in props:
            problems.append(f"{path}: not an element of {type_name}")
            continue
        declared = props[name]
        is_list = isinstance(declared, list)
        if not is_list and name in seen:
            problems.append(f"{path}: {type_name}.{name} may appear once")
        if seen and order.index(name) < order.index(seen[-1]):
            problems.append(
                f"{path}: out of order (after {seen[-1]}; the schema's order is {order})"
            )
        seen.append(name)
        child_type = (declared[0] if is_list else declared).removeprefix("?")
        if child_type in schemas:
            problems += _check_element(schemas, child, child_type, path)
        else:
            problems += _check_scalar(child, child_type, path)
    for name, declared in props.items():
        if isinstance(declared, str) and not declared.startswith("?") and name not in seen:
            problems.append(f"{where}: required element {type_name}.{name} missing")
    return problems


def _check_scalar(element: ET.Element, type_name: str, where: str) -> list[str]:
    if len(element):
        return [f"{where}: {type_name} value must not have child elements"]
    value = (element.text or "").strip()
    if type_name == "boolean" and value not in ("true", "false"):
        return [f"{where}: {value!r} is not a boolean"]
    if type_name == "number":
        try:
            float(value)
        except ValueError:
            return [f"{where}: {value!r} is not a number"]
    return []


@pytest.mark.integration
@pytest.mark.parametrize("path", xml_files(), ids=lambda p: p.name)
def test_every_element_is_allowed_by_the_metadata_api_schema(api_schemas: dict, path: Path) -> None:
    root = ET.parse(path).getroot()
    type_name = local(root.tag)
    assert type_name in api_schemas, f"{path.name}: {type_name} is not a Metadata API type"
    problems = _check_element(api_schemas, root, type_name, type_name)
    assert not problems, "\n".join(problems)


@pytest.mark.integration
def test_the_schema_check_catches_a_misspelt_element(api_schemas: dict) -> None:
    """The checker itself: unknown, missing, repeated and misplaced elements, a bad boolean."""
    bad = ET.fromstring(
        f'<Report xmlns="{NS[1:-1]}"><fromat>Summary</fromat><name>x</name><reportType>LeadList</reportType>'
        "<reportType>LeadList</reportType><showDetails>yes</showDetails><description>d</description></Report>"
    )
    problems = "\n".join(_check_element(api_schemas, bad, "Report", "Report"))
    assert "fromat: not an element of Report" in problems
    assert "required element Report.format missing" in problems
    assert "'yes' is not a boolean" in problems
    assert "Report.reportType may appear once" in problems
    assert "Report/description: out of order (after showDetails" in problems
