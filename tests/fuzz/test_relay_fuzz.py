"""
The real relay under generated and mutated requests, on both backends: no 5xx of its own, no
``api_error`` event, no traceback in its log (issue 8.2). Valid requests must also succeed.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.conftest import Target, examples
from tests.fuzz.strategies import encode, mutated_requests, requests

pytestmark = pytest.mark.integration



def fuzz(ci_examples: int) -> settings:
    """Settings of a fuzz test: ``ci_examples`` in CI (see :func:`examples`)."""
    return settings(max_examples=examples(ci_examples), deadline=None,
                    suppress_health_check=list(HealthCheck))


PATHS = ["/v1/messages", "/v1/messages?beta=true", "/v1/messages/count_tokens"]


@fuzz(100)
@given(body=requests, path=st.sampled_from(PATHS))
def test_valid_requests_are_served(target: Target, body: dict[str, Any], path: str) -> None:
    raw = encode(body)
    answer = target.post(path, raw)
    target.check(answer, raw)
    # Every valid request is answered; the only refusals allowed are the relay's own
    # documented ones (a tool whose file source this backend cannot fetch).
    assert answer.status == 200 or b"not supported" in answer.body, (
        f"{answer.status} {answer.body[:400]!r} for {raw[:400]!r}")


@fuzz(400)
@given(body=mutated_requests(), path=st.sampled_from(PATHS))
def test_mutated_requests_get_precise_answers(target: Target, body: Any, path: str) -> None:
    raw = encode(body)
    target.check(target.post(path, raw), raw)


@fuzz(60)
@given(body=requests, cut=st.integers(0, 400), junk=st.binary(max_size=8))
def test_broken_json_is_a_400(target: Target, body: dict[str, Any], cut: int, junk: bytes
                              ) -> None:
    raw = encode(body)
    broken = raw[: max(1, len(raw) - cut)] + junk
    answer = target.post("/v1/messages", broken)
    target.check(answer, broken)
