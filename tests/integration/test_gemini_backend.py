"""
The gemini backend end to end: the real relay (twistd) in front of the strict fake Gemini
server on loopback (AI Studio and Vertex AI paths, the OAuth token endpoint), with the
official anthropic SDK as the client.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.fakegemini import (
    PLACEHOLDER,
    FakeGemini,
    answer,
    call_part,
    chunk,
    error,
    google_error,
    sse,
    text_chunks,
    usage,
)
from tests.relayproc import DEMO_KEY, Relay, config_text, start_relay

pytestmark = pytest.mark.integration

GEMINI_KEY = "AIza-fake-gemini-key"
PROJECT = "txrelay-test"

BASH = {"name": "Bash", "description": "Run a shell command", "input_schema": {
    "$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
    "additionalProperties": False,
    "properties": {"command": {"type": "string", "description": "The command"},
                   "timeout": {"type": ["number", "null"], "exclusiveMinimum": 0},
                   "mode": {"const": "run"},
                   "env": {"type": "object", "propertyNames": {"pattern": "^[A-Z_]+$"},
                           "additionalProperties": {"type": "string"}},
                   "tags": {"type": "array", "items": {"$ref": "#/definitions/tag"},
                            "uniqueItems": True}},
    "required": ["command"],
    "definitions": {"tag": {"type": "string", "format": "hostname", "minLength": 1}}}}
READ = {"name": "Read", "description": "Read a file", "input_schema": {
    "type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeGemini]:
    f = FakeGemini(api_key=GEMINI_KEY).start()
    yield f
    f.stop()


def providers(fake: FakeGemini, credentials: Path) -> list[dict[str, Any]]:
    timeouts = {"connect": 2, "first_byte": 5, "idle": 3}
    return [
        {"name": "studio", "kind": "gemini", "base_url": fake.ai_studio_url,
         "api_key": {"env": "TXRELAY_TEST_GEMINI_KEY"}, "timeouts": timeouts,
         "options": {"api": "ai-studio"}},
        {"name": "studio-wrong-key", "kind": "gemini", "base_url": fake.ai_studio_url,
         "api_key": {"env": "TXRELAY_TEST_WRONG_KEY"}, "timeouts": timeouts},
        {"name": "vertex", "kind": "gemini", "base_url": fake.vertex_url, "timeouts": timeouts,
         "options": {"api": "vertex", "project": PROJECT, "location": "us-central1",
                     "credentials_file": str(credentials)}},
    ]


MODELS = [
    {"id": "claude-sonnet-4-6", "provider": "studio", "upstream_model": "gemini-3-pro-preview",
     "max_tokens": 8192, "patterns": ["claude-*"], "display_name": "Gemini 3 Pro"},
    {"id": "gemini-flash", "provider": "studio", "upstream_model": "gemini-2.5-flash"},
    {"id": "wrong-key", "provider": "studio-wrong-key", "upstream_model": "gemini-2.5-flash"},
    {"id": "vertex-pro", "provider": "vertex", "upstream_model": "gemini-3-pro-preview"},
]
ENV = {"TXRELAY_TEST_GEMINI_KEY": GEMINI_KEY, "TXRELAY_TEST_WRONG_KEY": "AIza-wrong-key"}


@pytest.fixture(scope="module")
def relay(fake: FakeGemini, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    tmp = tmp_path_factory.mktemp("gemini")
    credentials = fake.add_service_account(tmp / "service-account.json")
    cfg = config_text(server={"ping_interval": 0.5}, providers=providers(fake, credentials),
                      models=MODELS)
    r = start_relay(tmp, cfg, env=ENV)
    yield r
    r.stop()


@pytest.fixture()
def client(relay: Relay) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=relay.url, api_key=DEMO_KEY, max_retries=0) as c:
        yield c


@pytest.fixture(autouse=True)
def clean_script(fake: FakeGemini) -> Iterator[None]:
    fake.script.clear()
    yield
    fake.script.clear()


def user(text: str = "hi") -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def echo(message: anthropic.types.Message) -> list[dict[str, Any]]:
    """The assistant content as a client sends it back."""
    return [b.model_dump(exclude_none=True) for b in message.content]


def test_ai_studio_stream_key_in_header_never_in_url(client: anthropic.Anthropic,
                                                     fake: FakeGemini, relay: Relay) -> None:
    fake.push(sse(text_chunks("Hello from Gemini, friend.", pieces=4, prompt=31)))
    with client.messages.stream(model="claude-sonnet-4-6", max_tokens=100000,
                                system="Be brief.", messages=user("greet me")) as stream:
        kinds = [e.type for e in stream]
        message = stream.get_final_message()
    assert message.content[0].text == "Hello from Gemini, friend."  # type: ignore[union-attr]
    assert message.model == "claude-sonnet-4-6" and message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 31 and message.usage.output_tokens == 7
    assert kinds.count("text") >= 4
    sent = fake.model_requests[-1]
    assert sent.rejected is None
    assert sent.path == "/v1beta/models/gemini-3-pro-preview:streamGenerateContent"
    assert sent.query == {"alt": ["sse"]}
    assert sent.headers["x-goog-api-key"] == GEMINI_KEY
    assert "authorization" not in sent.headers
    assert not any(h.startswith(("anthropic-", "x-stainless", "x-api-key")) for h in sent.headers)
    assert DEMO_KEY not in json.dumps(sent.headers)
    assert sent.body["systemInstruction"]["parts"] == [{"text": "Be brief."}]
    assert sent.body["generationConfig"]["maxOutputTokens"] == 8192  # clamped
    assert GEMINI_KEY not in relay.log()


def test_non_streaming_tool_call(client: anthropic.Anthropic, fake: FakeGemini) -> None:
    fake.push(answer(chunk({"text": "Reading."}, call_part("Read", {"path": "a.py"}),
                           finish="STOP", usage=usage(40, 9))))
    msg = client.messages.create(model="gemini-flash", max_tokens=100, tools=[READ],
                                 messages=user("read a.py"))
    sent = fake.model_requests[-1]
    assert sent.path == "/v1beta/models/gemini-2.5-flash:generateContent" and not sent.query
    assert [b.type for b in msg.content] == ["text", "tool_use"]
    assert msg.content[1].input == {"path": "a.py"}  # type: ignore[union-attr]
    assert msg.content[1].id.startswith("toolu_")  # type: ignore[union-attr]
    assert msg.stop_reason == "tool_use" and msg.usage.output_tokens == 9


def test_tool_round_trip_carries_thought_signatures(client: anthropic.Anthropic,
                                                    fake: FakeGemini) -> None:
    """Gemini 3 rejects a current-turn call without its signature: it must come back."""
    fake.push(sse([
        chunk({"text": "I should list the files.", "thought": True},
              usage={"promptTokenCount": 50, "totalTokenCount": 50}),
        chunk(call_part("Bash", {"command": "ls"}, signature="c2lnLWJhc2gtMQ=="),
              call_part("Read", {"path": "README.md"}),
              finish="STOP", usage=usage(50, 12, thoughts=30)),
    ]))
    tools: Any = [BASH, READ]
    with client.messages.stream(model="claude-sonnet-4-6", max_tokens=2000, tools=tools,
                                thinking={"type": "enabled", "budget_tokens": 1024},
                                messages=user("list and read")) as stream:
        first = stream.get_final_message()
    uses = [b for b in first.content if b.type == "tool_use"]
    assert [u.name for u in uses] == ["Bash", "Read"] and first.stop_reason == "tool_use"
    assert uses[0].input == {"command": "ls"}
    assert first.usage.output_tokens == 42  # thoughts count as output
    request = fake.model_requests[-1]
    assert request.rejected is None
    decl = request.body["tools"][0]["functionDeclarations"][0]
    assert decl["name"] == "Bash"
    text = json.dumps(decl)
    for keyword in ("$schema", "additionalProperties", "propertyNames", "exclusiveMinimum",
                    "const", "$ref", "definitions", "uniqueItems", "hostname"):
        assert keyword not in text, keyword

    fake.push(sse(text_chunks("Two files.")))
    history = [*user("list and read"), {"role": "assistant", "content": echo(first)},
               {"role": "user", "content": [
                   {"type": "tool_result", "tool_use_id": uses[0].id, "content": "a.py b.py"},
                   {"type": "tool_result", "tool_use_id": uses[1].id, "content": "# readme"}]}]
    with client.messages.stream(model="claude-sonnet-4-6", max_tokens=2000, tools=tools,
                                thinking={"type": "enabled", "budget_tokens": 1024},
                                messages=history) as stream:
        second = stream.get_final_message()
    assert second.content[-1].text == "Two files."  # type: ignore[union-attr]
    request = fake.model_requests[-1]
    assert request.rejected is None, request.rejected
    model_turn = request.body["contents"][1]
    calls = [p for p in model_turn["parts"] if "functionCall" in p]
    assert calls[0]["thoughtSignature"] == "c2lnLWJhc2gtMQ=="  # on the exact part
    assert "thoughtSignature" not in calls[1]
    responses = [p["functionResponse"] for p in request.body["contents"][2]["parts"]]
    assert [r["name"] for r in responses] == ["Bash", "Read"]


def test_foreign_history_gets_the_placeholder(client: anthropic.Anthropic,
                                              fake: FakeGemini) -> None:
    """A tool call another backend made has no signature: Google's placeholder goes instead."""
    fake.push(sse(text_chunks("Done.")))
    history = [*user("run ls"),
               {"role": "assistant", "content": [
                   {"type": "tool_use", "id": "toolu_01XyZ", "name": "Bash",
                    "input": {"command": "ls"}}]},
               {"role": "user", "content": [
                   {"type": "tool_result", "tool_use_id": "toolu_01XyZ", "content": "a.py"}]}]
    with client.messages.stream(model="claude-sonnet-4-6", max_tokens=100, tools=[BASH],
                                messages=history) as stream:
        assert stream.get_final_message().stop_reason == "end_turn"
    request = fake.model_requests[-1]
    assert request.rejected is None, request.rejected
    assert request.body["contents"][1]["parts"][0]["thoughtSignature"] == PLACEHOLDER


def test_the_fake_is_strict_about_signatures_and_pairing(fake: FakeGemini) -> None:
    """The fake rejects what Gemini 3 rejects (so the tests above mean something)."""
    from tests.fakegemini import Invalid, check_generate
    call = {"role": "model", "parts": [{"functionCall": {"name": "Bash", "args": {}}}]}
    result = {"role": "user", "parts": [{"functionResponse": {"name": "Bash",
                                                              "response": {"output": "x"}}}]}
    contents = [{"role": "user", "parts": [{"text": "go"}]}, call, result]
    with pytest.raises(Invalid, match="missing a thought_signature"):
        check_generate({"contents": contents}, vertex=False, model="gemini-3-pro-preview",
                       issued=set())
    check_generate({"contents": contents}, vertex=False, model="gemini-2.5-flash", issued=set())
    with pytest.raises(Invalid, match="number of function response parts"):
        check_generate({"contents": [*contents[:2], {"role": "user", "parts": [
            result["parts"][0], result["parts"][0]]}]}, vertex=False,
            model="gemini-2.5-flash", issued=set())
    with pytest.raises(Invalid, match='Unknown name "additionalProperties"'):
        check_generate({"contents": contents[:1], "tools": [{"functionDeclarations": [
            {"name": "f", "parameters": {"type": "object", "additionalProperties": False}}]}]},
            vertex=False, model="gemini-2.5-flash", issued=set())
    with pytest.raises(Invalid, match="Please use a valid role"):
        check_generate({"contents": [{"parts": [{"text": "x"}]}]}, vertex=True,
                       model="gemini-2.5-flash", issued=set())


@pytest.mark.parametrize(("responder", "status", "kind"), [
    (error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota).",
           retry_delay="27s"), 429, "rate_limit_error"),
    (error(503, "UNAVAILABLE", "The model is overloaded. Please try again later."), 529,
     "overloaded_error"),
    (error(404, "NOT_FOUND", "models/gemini-3-pro-preview is not found for API version "
           "v1beta"), 404, "not_found_error"),
    (error(400, "INVALID_ARGUMENT", "The input token count (1200000) exceeds the maximum "
           "number of tokens allowed (1048576)."), 400, "invalid_request_error"),
])
@pytest.mark.parametrize("stream", [True, False])
def test_upstream_errors(client: anthropic.Anthropic, fake: FakeGemini, responder: Any,
                         status: int, kind: str, stream: bool) -> None:
    fake.push(responder)
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=user(),
                               stream=stream)
    err = info.value
    assert err.status_code == status, err.body
    assert err.body["error"]["type"] == kind  # type: ignore[index]
    message = err.body["error"]["message"]  # type: ignore[index]
    assert "Traceback" not in message and "RESOURCE_EXHAUSTED\"" not in message
    if status == 429:
        assert err.response.headers["retry-after"] == "27"
    if status == 400:
        assert message == "prompt is too long: 1200000 tokens > 1048576 maximum"


@pytest.mark.parametrize("stream", [True, False])
def test_invalid_api_key_is_a_401_for_our_client(client: anthropic.Anthropic, fake: FakeGemini,
                                                 relay: Relay, stream: bool) -> None:
    with pytest.raises(anthropic.AuthenticationError) as info:
        client.messages.create(model="wrong-key", max_tokens=10, messages=user(),
                               stream=stream)
    assert fake.model_requests[-1].rejected is not None  # the fake said API_KEY_INVALID (400)
    message = info.value.body["error"]["message"]  # type: ignore[index]
    assert "studio-wrong-key" in message and "AIza-wrong-key" not in message
    assert "AIza-wrong-key" not in relay.log()


def test_count_tokens_through_count_tokens(client: anthropic.Anthropic,
                                           fake: FakeGemini) -> None:
    fake.push(answer({"totalTokens": 1234, "promptTokensDetails": [
        {"modality": "TEXT", "tokenCount": 1234}]}))
    counted = client.messages.count_tokens(model="claude-sonnet-4-6", system="sys",
                                           tools=[BASH], messages=user("count me"))
    assert counted.input_tokens == 1234
    sent = fake.model_requests[-1]
    assert sent.path == "/v1beta/models/gemini-3-pro-preview:countTokens"
    assert sent.rejected is None
    inner = sent.body["generateContentRequest"]
    assert inner["model"] == "models/gemini-3-pro-preview"
    assert inner["systemInstruction"]["parts"] == [{"text": "sys"}]
    assert inner["tools"][0]["functionDeclarations"][0]["name"] == "Bash"


def test_count_tokens_falls_back_to_an_estimate_when_gemini_is_busy(
        client: anthropic.Anthropic, fake: FakeGemini) -> None:
    fake.push(error(429, "RESOURCE_EXHAUSTED", "Quota exceeded."))
    counted = client.messages.count_tokens(model="claude-sonnet-4-6",
                                           messages=user("count me " * 50))
    assert counted.input_tokens > 50


def test_models_lists_the_configured_models(client: anthropic.Anthropic) -> None:
    ids = [m.id for m in client.models.list()]
    assert {"claude-sonnet-4-6", "gemini-flash", "vertex-pro"} <= set(ids)
    assert client.models.retrieve("claude-sonnet-4-6").display_name == "Gemini 3 Pro"


# --- Vertex AI -------------------------------------------------------------------------------


def test_vertex_with_a_service_account(client: anthropic.Anthropic, fake: FakeGemini,
                                       relay: Relay) -> None:
    fake.push(sse(text_chunks("From Vertex.")), answer(chunk(
        {"text": "Again."}, finish="STOP", usage=usage())))
    with client.messages.stream(model="vertex-pro", max_tokens=100, system="s",
                                messages=user()) as stream:
        assert stream.get_final_message().content[0].text == "From Vertex."  # type: ignore[union-attr]
    msg = client.messages.create(model="vertex-pro", max_tokens=100, messages=user())
    assert msg.content[0].text == "Again."  # type: ignore[union-attr]
    streamed, plain = fake.model_requests[-2:]
    base = f"/v1/projects/{PROJECT}/locations/us-central1/publishers/google/models/" \
        "gemini-3-pro-preview"
    assert streamed.path == f"{base}:streamGenerateContent" and streamed.query == {"alt": ["sse"]}
    assert plain.path == f"{base}:generateContent"
    assert streamed.api == "vertex" and streamed.rejected is None
    token = streamed.headers["authorization"].removeprefix("Bearer ")
    assert token.startswith("ya29.fake-access-token-") and "x-goog-api-key" not in streamed.headers
    assert plain.headers["authorization"] == streamed.headers["authorization"]  # reused
    assert all(c["role"] in ("user", "model") for c in streamed.body["contents"])
    assert streamed.body["systemInstruction"]["role"] == "user"
    assert token not in relay.log()


def test_vertex_token_rejected_is_refreshed_and_retried_once(
        client: anthropic.Anthropic, fake: FakeGemini) -> None:
    client.messages.create(model="vertex-pro", max_tokens=10, messages=user())
    before = len(fake.token_requests)
    fake.expire_tokens()
    fake.push(answer(chunk({"text": "After a refresh."}, finish="STOP", usage=usage())))
    msg = client.messages.create(model="vertex-pro", max_tokens=10, messages=user())
    assert msg.content[0].text == "After a refresh."  # type: ignore[union-attr]
    assert len(fake.token_requests) == before + 1
    rejected, retried = fake.model_requests[-2:]
    assert rejected.rejected is not None and retried.rejected is None
    assert rejected.headers["authorization"] != retried.headers["authorization"]


def test_vertex_count_tokens_top_level_fields(client: anthropic.Anthropic,
                                              fake: FakeGemini) -> None:
    fake.push(answer({"totalTokens": 77}))
    assert client.messages.count_tokens(model="vertex-pro", system="s",
                                        messages=user()).input_tokens == 77
    sent = fake.model_requests[-1]
    assert sent.path.endswith("/models/gemini-3-pro-preview:countTokens")
    assert "contents" in sent.body and "generateContentRequest" not in sent.body


def test_concurrent_requests_share_one_token_refresh(fake: FakeGemini, tmp_path: Path) -> None:
    """N requests arrive while the first token is being fetched: one fetch serves them all."""
    account = "concurrent@txrelay-test.iam.gserviceaccount.com"
    credentials = fake.add_service_account(tmp_path / "sa.json", email=account)
    cfg = config_text(providers=[{
        "name": "vertex", "kind": "gemini", "base_url": fake.vertex_url,
        "options": {"api": "vertex", "project": PROJECT, "location": "europe-west4",
                    "credentials_file": str(credentials)}}],
        models=[{"id": "claude-sonnet-4-6", "provider": "vertex",
                 "upstream_model": "gemini-2.5-flash"}])
    relay = start_relay(tmp_path, cfg)
    fake.token_delay = 1.0  # every request arrives while the one refresh is in flight
    before = len(fake.token_requests)
    failures: list[BaseException] = []
    answers: list[str] = []

    def one() -> None:
        try:
            with anthropic.Anthropic(base_url=relay.url, api_key=DEMO_KEY,
                                     max_retries=0) as c:
                msg = c.messages.create(model="claude-sonnet-4-6", max_tokens=10,
                                        messages=user())
                answers.append(msg.content[0].text)  # type: ignore[union-attr]
        except BaseException as e:
            failures.append(e)

    try:
        workers = [threading.Thread(target=one) for _ in range(8)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(30)
    finally:
        fake.token_delay = 0.0
        relay.stop()
    assert not failures, failures
    assert answers == ["Hello from fake Gemini."] * 8
    assert len(fake.token_requests) - before == 1
    paths = {r.path for r in fake.model_requests[-8:]}
    assert paths == {f"/v1/projects/{PROJECT}/locations/europe-west4/publishers/google/"
                     "models/gemini-2.5-flash:generateContent"}
    log = relay.log()
    assert "vertex: Vertex AI access token refreshed" in log and "ya29." not in log


@pytest.mark.parametrize(("content", "reason"), [
    (None, "cannot be read (no such file or directory)"),
    ("{not json", "not valid JSON"),
    (json.dumps({"type": "authorized_user", "client_id": "x"}), "not a service account key"),
    (json.dumps({"type": "service_account", "client_email": "a@b"}),
     "missing field(s) private_key, token_uri"),
])
def test_a_bad_credentials_file_stops_the_relay_at_start(tmp_path: Path, content: str | None,
                                                         reason: str) -> None:
    path = tmp_path / "credentials.json"
    if content is not None:
        path.write_text(content)
    cfg = config_text(providers=[{
        "name": "vertex", "kind": "gemini",
        "options": {"api": "vertex", "project": PROJECT, "credentials_file": str(path)}}],
        models=[{"id": "claude-sonnet-4-6", "provider": "vertex"}])
    with pytest.raises(RuntimeError) as info:
        start_relay(tmp_path, cfg)
    text = str(info.value)
    assert f"providers[0].options.credentials_file: service account file {path}: " in text
    assert reason in text
    assert "Traceback" not in text


def test_a_rejected_signature_is_retried_once_without_signatures(
        client: anthropic.Anthropic, fake: FakeGemini, relay: Relay) -> None:
    """R-G10.3: Gemini no longer takes a replayed signature: the turn goes again without."""
    fake.push(sse([chunk(call_part("Bash", {"command": "ls"}, signature="c2lnLXJvdGF0ZWQ="),
                         finish="STOP", usage=usage())]))
    with client.messages.stream(model="claude-sonnet-4-6", max_tokens=100, tools=[BASH],
                                messages=user("ls")) as stream:
        first = stream.get_final_message()
    (use,) = [b for b in first.content if b.type == "tool_use"]
    fake.issued_signatures.discard("c2lnLXJvdGF0ZWQ=")  # e.g. the key was rotated since
    fake.push(sse(text_chunks("Listed.")))
    history = [*user("ls"), {"role": "assistant", "content": echo(first)},
               {"role": "user", "content": [
                   {"type": "tool_result", "tool_use_id": use.id, "content": "a.py"}]}]
    with client.messages.stream(model="claude-sonnet-4-6", max_tokens=100, tools=[BASH],
                                messages=history) as stream:
        assert stream.get_final_message().content[-1].text == "Listed."  # type: ignore[union-attr]
    rejected, retried = fake.model_requests[-2:]
    assert rejected.rejected == "Corrupted thought signature."
    assert rejected.body["contents"][1]["parts"][0]["thoughtSignature"] == "c2lnLXJvdGF0ZWQ="
    assert retried.rejected is None
    assert retried.body["contents"][1]["parts"][0]["thoughtSignature"] == PLACEHOLDER
    assert "thought signature; trying once more" in relay.log()


def test_vertex_token_rejected_while_streaming_is_retried(client: anthropic.Anthropic,
                                                          fake: FakeGemini) -> None:
    client.messages.create(model="vertex-pro", max_tokens=10, messages=user())
    fake.expire_tokens()
    fake.push(sse(text_chunks("Streamed after a refresh.")))
    with client.messages.stream(model="vertex-pro", max_tokens=10, messages=user()) as stream:
        text = stream.get_final_message().content[0].text  # type: ignore[union-attr]
    assert text == "Streamed after a refresh."
    assert [r.rejected is None for r in fake.model_requests[-2:]] == [False, True]


def test_vertex_token_endpoint_refusal_is_a_401(fake: FakeGemini, tmp_path: Path) -> None:
    """A key Google does not know (deleted service account): a 401 saying so, no traceback."""
    path = tmp_path / "sa.json"
    from tests.fakegemini import service_account_file
    service_account_file(path, fake.token_uri, email="unknown@txrelay-test.iam.gserviceaccount.com")
    cfg = config_text(providers=[{
        "name": "vertex", "kind": "gemini", "base_url": fake.vertex_url,
        "options": {"api": "vertex", "project": PROJECT, "credentials_file": str(path)}}],
        models=[{"id": "claude-sonnet-4-6", "provider": "vertex",
                 "upstream_model": "gemini-2.5-flash"}])
    relay = start_relay(tmp_path, cfg)
    try:
        with anthropic.Anthropic(base_url=relay.url, api_key=DEMO_KEY, max_retries=0) as c, \
                pytest.raises(anthropic.AuthenticationError) as info:
            c.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=user())
    finally:
        relay.stop()
    message = info.value.body["error"]["message"]  # type: ignore[index]
    assert "Google refused to issue a Vertex AI access token" in message
    assert "invalid_grant" in message and "Traceback" not in relay.log()


MALFORMED = chunk(finish="MALFORMED_FUNCTION_CALL", usage=usage(30, 0))


@pytest.mark.parametrize("stream", [True, False])
def test_a_malformed_function_call_is_asked_once_more(client: anthropic.Anthropic,
                                                      fake: FakeGemini, stream: bool) -> None:
    """§8.2: Gemini's answer was only a malformed call, nothing was sent yet: ask again."""
    good = chunk(call_part("Read", {"path": "a.py"}), finish="STOP", usage=usage())
    fake.push(sse([MALFORMED]) if stream else answer(MALFORMED),
              sse([good]) if stream else answer(good))
    before = len(fake.model_requests)
    msg = client.messages.create(model="gemini-flash", max_tokens=100, tools=[READ],
                                 messages=user("read a.py"), stream=False) if not stream else \
        _streamed(client, tools=[READ])
    assert [b.type for b in msg.content] == ["tool_use"] and msg.stop_reason == "tool_use"
    assert len(fake.model_requests) - before == 2


@pytest.mark.parametrize("stream", [True, False])
def test_a_second_malformed_call_is_explained_to_the_client(client: anthropic.Anthropic,
                                                            fake: FakeGemini,
                                                            stream: bool) -> None:
    fake.push(*([sse([MALFORMED]), sse([MALFORMED])] if stream
                else [answer(MALFORMED), answer(MALFORMED)]))
    before = len(fake.model_requests)
    msg = _streamed(client, tools=[READ]) if stream else client.messages.create(
        model="gemini-flash", max_tokens=100, tools=[READ], messages=user("read a.py"))
    assert len(fake.model_requests) - before == 2
    assert msg.content[0].text == "[upstream returned a malformed tool call]"  # type: ignore[union-attr]


def _streamed(client: anthropic.Anthropic, **kwargs: Any) -> anthropic.types.Message:
    with client.messages.stream(model="gemini-flash", max_tokens=100,
                                messages=user("read a.py"), **kwargs) as stream:
        return stream.get_final_message()


def test_an_error_inside_a_committed_stream_is_an_error_event(relay: Relay,
                                                              fake: FakeGemini) -> None:
    from tests.integration.test_openai_backend import raw_stream
    fake.push(sse([chunk({"text": "partial"}),
                   google_error(503, "UNAVAILABLE", "The model is overloaded.")]))
    frames = raw_stream(relay, {"model": "claude-sonnet-4-6", "max_tokens": 10,
                                "messages": user(), "stream": True})
    names = [f[0] for f in frames]
    assert names[0] == "message_start" and names[-1] == "error"
    assert "message_stop" not in names and "message_delta" not in names
    assert frames[-1][1]["error"]["type"] == "overloaded_error"


def test_a_stream_cut_before_finish_reason_is_an_error(relay: Relay, fake: FakeGemini) -> None:
    from tests.integration.test_openai_backend import raw_stream
    fake.push(sse([chunk({"text": "cut "}), chunk({"text": "off"})]))
    names = [f[0] for f in raw_stream(relay, {"model": "claude-sonnet-4-6", "max_tokens": 10,
                                              "messages": user(), "stream": True})]
    assert names[-1] == "error" and "message_stop" not in names


def test_vertex_with_application_default_credentials(fake: FakeGemini, tmp_path: Path) -> None:
    """No credentials_file: google-auth's ADC finds GOOGLE_APPLICATION_CREDENTIALS."""
    credentials = fake.add_service_account(tmp_path / "adc.json",
                                           email="adc@txrelay-test.iam.gserviceaccount.com")
    cfg = config_text(providers=[{
        "name": "vertex", "kind": "gemini", "base_url": fake.vertex_url,
        "options": {"api": "vertex", "project": PROJECT, "location": "global"}}],
        models=[{"id": "claude-sonnet-4-6", "provider": "vertex",
                 "upstream_model": "gemini-2.5-flash"}])
    relay = start_relay(tmp_path, cfg, env={"GOOGLE_APPLICATION_CREDENTIALS": str(credentials)})
    try:
        with anthropic.Anthropic(base_url=relay.url, api_key=DEMO_KEY, max_retries=0) as c:
            msg = c.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=user())
    finally:
        relay.stop()
    assert msg.content[0].text == "Hello from fake Gemini."  # type: ignore[union-attr]
    sent = fake.model_requests[-1]
    assert sent.path.startswith(f"/v1/projects/{PROJECT}/locations/global/publishers/google/")
    assert sent.rejected is None
