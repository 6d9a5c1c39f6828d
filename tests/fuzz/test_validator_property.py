"""
The validator alone, in process: valid requests always pass; mutated ones pass or are a 400
RelayError, never another exception; and whatever passes, every consumer of the request
(token estimation, the demo model, the Chat Completions translation, the encoder) handles.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings

from tests.fuzz.conftest import examples
from tests.fuzz.strategies import encode, mutated_requests, requests
from txrelay.protocol.anthropic import MessagesRequest, parse_request
from txrelay.protocol.demo import demo_events
from txrelay.protocol.errors import RelayError
from txrelay.protocol.jsoncodec import dumps
from txrelay.protocol.openai import PRESETS, ToolNameMap, build_chat_request
from txrelay.protocol.tokens import estimate_input_tokens

SETTINGS = settings(max_examples=examples(300), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def consume(req: MessagesRequest) -> None:
    """What the stages downstream of the validator do with a request."""
    estimate_input_tokens(req)
    demo_events(req, model=req.model, message_id="msg_1", input_tokens=1)
    for dialect in (PRESETS["openai"], PRESETS["generic"]):
        try:
            dumps(build_chat_request(
                req, upstream_model="m", dialect=dialect, max_output_tokens=4096,
                stream=req.stream, tool_names=ToolNameMap.from_request(req),
                context_window=200_000, prompt_tokens=10))
        except RelayError as e:  # a documented refusal (e.g. file sources), still a 4xx
            assert 400 <= e.status < 500, e


@SETTINGS
@given(requests)
def test_valid_requests_pass(body: dict[str, Any]) -> None:
    consume(parse_request(encode(body)))
    consume(parse_request(encode(body), count_tokens=True))


@SETTINGS
@given(mutated_requests())
def test_mutated_requests_pass_or_are_400s(body: Any) -> None:
    try:
        req = parse_request(encode(body))
    except RelayError as e:
        assert e.status == 400 and e.type == "invalid_request_error"
        assert "Traceback" not in e.message and "{'" not in e.message
        return
    consume(req)
