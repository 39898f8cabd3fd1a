from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from kpi_pipeline.adapters.llm.client import ChatClient, ChatClientError, selector_from_settings
from kpi_pipeline.config import Settings
from kpi_pipeline.core.workloads.outreach_templates import (
    CatalogError,
    LLMSelector,
    LocalRanker,
    MissingTemplateVariable,
    applied_template,
    fill_template,
    lead_variables,
    load_catalog,
    parse_catalog,
    selection_completion,
    selection_messages,
)
from kpi_pipeline.core.workloads.records import RecordState

CATALOG = load_catalog()
ENTERPRISE_WEB = {
    "FirstName": "Ada",
    "Company": "Initech",
    "Industry": "Technology",
    "LeadSource": "Web",
    "NumberOfEmployees": 4200,
    "Email": "ada@initech.example",
}


# --- a local OpenAI-compatible server ----------------------------------------------------


class FakeLLM:
    """What the local /v1/chat/completions answers next, and what it received."""

    def __init__(self) -> None:
        self.content: str = ""
        self.delay = 0.0
        self.status = 200
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []


@pytest.fixture
def llm() -> Iterator[tuple[FakeLLM, str]]:
    fake = FakeLLM()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.path != "/v1/chat/completions":
                self.send_error(404)
                return
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            fake.requests.append(body)
            fake.headers.append(dict(self.headers))
            time.sleep(fake.delay)
            payload = {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "created": 1_800_000_000,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": fake.content},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
            }
            data = json.dumps(payload).encode()
            self.send_response(fake.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(data)  # the client may have given up (timeout test)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield fake, f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_llm_selector_uses_a_valid_answer(llm):
    fake, base_url = llm
    fake.content = (
        '```json\n{"template_id": "enterprise-exec-intro", "reason": "large company"}\n```'
    )
    client = ChatClient(base_url, "small-model", api_key="k-123", timeout=5)
    selection = LLMSelector(client).select(ENTERPRISE_WEB, CATALOG)
    assert (selection.template_id, selection.reason, selection.model) == (
        "enterprise-exec-intro",
        "large company",
        "small-model",
    )
    assert selection.fallback_reason is None
    assert selection.candidates == (
        "demo-invite",
        "enterprise-exec-intro",
        "intro-value",
        "intro-short",
    )
    sent = fake.requests[0]
    assert sent["model"] == "small-model" and sent["temperature"] == 0
    assert sent["messages"] == selection_messages(ENTERPRISE_WEB, CATALOG) == selection.messages
    assert fake.headers[0]["Authorization"] == "Bearer k-123"
    assert "ada@initech.example" not in json.dumps(sent)  # no personal data leaves
    assert selection.completion["choices"][0]["message"]["content"] == fake.content


def test_llm_selector_falls_back_on_invalid_json(llm):
    fake, base_url = llm
    fake.content = "I would pick the demo one!"
    selection = LLMSelector(ChatClient(base_url, "m", timeout=5)).select(ENTERPRISE_WEB, CATALOG)
    assert selection.template_id == LocalRanker().select(ENTERPRISE_WEB, CATALOG).template_id
    assert selection.model == "local-ranker-v1"
    assert "answer is not JSON" in selection.fallback_reason
    assert "fallback: LLM answer rejected" in selection.reason


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ({"template_id": "made-up"}, "unknown template 'made-up'"),
        ({"template_id": "partner-intro"}, "not eligible for this lead"),
        ({"reason": "no id"}, "lacks a string template_id"),
    ],
)
def test_llm_selector_rejects_unknown_or_ineligible_templates(llm, answer, why):
    fake, base_url = llm
    fake.content = json.dumps(answer)
    selection = LLMSelector(ChatClient(base_url, "m", timeout=5)).select(ENTERPRISE_WEB, CATALOG)
    assert why in selection.fallback_reason
    assert selection.template_id == "demo-invite"  # the local ranker's choice


def test_llm_selector_falls_back_on_timeout(llm):
    fake, base_url = llm
    fake.delay = 1.0
    fake.content = '{"template_id": "enterprise-exec-intro"}'
    started = time.monotonic()
    selection = LLMSelector(ChatClient(base_url, "m", timeout=0.2)).select(ENTERPRISE_WEB, CATALOG)
    assert time.monotonic() - started < 0.9
    assert "did not answer within 0.2s" in selection.fallback_reason
    assert selection.template_id == "demo-invite"


def test_llm_selector_falls_back_on_http_error(llm):
    fake, base_url = llm
    fake.status = 500
    selection = LLMSelector(ChatClient(base_url, "m", timeout=5)).select(ENTERPRISE_WEB, CATALOG)
    assert "HTTP 500" in selection.fallback_reason


def test_chat_client_errors_are_typed(llm):
    _, base_url = llm
    with pytest.raises(ChatClientError) as caught:
        ChatClient(base_url.replace("/v1", "/nope"), "m", timeout=5).complete(
            [{"role": "user", "content": "hi"}]
        )
    assert caught.value.kind == "http"
    with pytest.raises(ValueError, match="KPI_LLM_BASE_URL"):
        ChatClient("127.0.0.1:8000", "m")


# --- local ranker, filling, applied template ----------------------------------------------


def test_local_ranker_prefers_the_most_specific_eligible_template_deterministically():
    ranker = LocalRanker()
    first = ranker.select(ENTERPRISE_WEB, CATALOG)
    assert first == ranker.select(dict(reversed(list(ENTERPRISE_WEB.items()))), CATALOG)
    # source, size and size match one dimension each: catalog order puts intent first
    assert first.candidates == (
        "demo-invite",
        "enterprise-exec-intro",
        "intro-value",
        "intro-short",
    )
    assert (first.template_id, first.reason) == ("demo-invite", "matched LeadSource=Web")
    big_healthcare_webinar = {
        "Industry": "Healthcare",
        "NumberOfEmployees": 3000,
        "LeadSource": "Webinar",
    }
    assert ranker.select(big_healthcare_webinar, CATALOG).template_id == "event-follow-up"
    clinic = {
        "FirstName": "Bo",
        "Company": "Clinic",
        "Industry": "Healthcare",
        "NumberOfEmployees": 20,
    }
    assert ranker.select(clinic, CATALOG).template_id == "healthcare-compliance"
    assert ranker.select({"LeadSource": "Partner Referral"}, CATALOG).template_id == "partner-intro"
    general = ranker.select({}, CATALOG)
    assert general.template_id == "intro-short"
    assert "some variables must be filled by hand" in general.reason
    web_only = parse_catalog(
        {
            "templates": [
                {
                    "id": "w",
                    "intent": "i",
                    "subject": "s",
                    "body": "b",
                    "eligible_segments": {"LeadSource": ["Web"]},
                }
            ]
        }
    )
    assert ranker.select({"LeadSource": "Phone Inquiry"}, web_only).template_id is None


def test_fill_template_and_missing_variable():
    template = CATALOG.get("demo-invite")
    variables = lead_variables(ENTERPRISE_WEB, sender_name="Sam")
    subject, body = fill_template(template, variables)
    assert subject == "15 minutes for a demo, Ada?"
    assert body.startswith("Hi Ada,") and body.endswith("Sam")
    with pytest.raises(MissingTemplateVariable) as caught:
        fill_template(template, lead_variables(ENTERPRISE_WEB))
    assert caught.value.template_id == "demo-invite" and caught.value.variable == "sender_name"
    assert "needs variable 'sender_name'" in str(caught.value)


def test_catalog_rejects_undeclared_variables_and_duplicates():
    item = {
        "id": "x",
        "intent": "i",
        "subject": "Hi {{name}}",
        "body": "b",
        "required_variables": [],
    }
    with pytest.raises(CatalogError, match=r"undeclared variables \['name'\]"):
        parse_catalog({"templates": [item]})
    ok = {**item, "required_variables": ["name"]}
    with pytest.raises(CatalogError, match="used twice"):
        parse_catalog({"templates": [ok, ok]})


def email(**fields: Any) -> RecordState:
    return RecordState("EmailMessage", "02s000000000001AAA", fields)


def test_applied_template_by_template_id_or_subject():
    # the sandbox org's EmailTemplate ids map to catalog ids; catalog ids are accepted too
    assert (
        applied_template(email(EmailTemplateId="00X5g0000000005EAA"), CATALOG) == "event-follow-up"
    )
    assert applied_template(email(EmailTemplateId="intro-value"), CATALOG) == "intro-value"
    assert applied_template(email(Subject="15 minutes for a demo, Ada?"), CATALOG) == "demo-invite"
    assert (
        applied_template(email(Subject="How Retail teams cut response time"), CATALOG)
        == "intro-value"
    )
    assert applied_template(email(Subject="Quick question about Initech"), CATALOG) == "intro-short"
    prefixed = "Introduced by our partner: next steps (pricing attached)"
    assert applied_template(email(Subject=prefixed), CATALOG) == "partner-intro"
    assert applied_template(email(Subject="Lunch on Friday?"), CATALOG) is None
    assert applied_template(email(EmailTemplateId="00X000000000099AAA"), CATALOG) is None
    assert applied_template(email(), CATALOG) is None


def test_selection_completion_is_a_chat_completion():
    selection = LocalRanker().select(ENTERPRISE_WEB, CATALOG)
    completion = selection_completion(selection, created=1_800_000_000)
    assert completion["object"] == "chat.completion" and completion["model"] == "local-ranker-v1"
    answer = json.loads(completion["choices"][0]["message"]["content"])
    assert answer["template_id"] == selection.template_id


def test_selector_from_settings_picks_the_llm_only_when_configured(llm):
    _, base_url = llm
    assert isinstance(
        selector_from_settings(Settings(_env_file=None, llm_base_url=None)), LocalRanker
    )
    configured = Settings(
        _env_file=None, llm_base_url=base_url, llm_model="m2", llm_timeout_seconds=3
    )
    selector = selector_from_settings(configured)
    assert isinstance(selector, LLMSelector)
    assert (selector.client.endpoint, selector.client.model, selector.client.timeout) == (
        f"{base_url}/chat/completions",
        "m2",
        3,
    )
