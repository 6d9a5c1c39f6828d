"""RequestRecord's token and routing fields, from the shapes responses and stages give."""

from __future__ import annotations

from txrelay.ledger.record import RequestRecord, routing_fields, usage_fields


def test_usage_fields() -> None:
    got = usage_fields({"input_tokens": 5, "output_tokens": 7, "cache_read_input_tokens": 2,
                        "cache_creation_input_tokens": True,
                        "output_tokens_details": {"thinking_tokens": 3}})
    assert got == {"input_tokens": 5, "output_tokens": 7, "cache_read_tokens": 2,
                   "cache_creation_tokens": None, "thinking_tokens": 3}
    assert set(usage_fields(None).values()) == {None}


def test_routing_fields() -> None:
    from txrelay.catalog import Route
    from txrelay.routing.policy import Attempt

    route = Route("asked", "p", "up", None, target="t-b", attempts=(
        Attempt("t-a", None, "breaker_open"), Attempt("t-a", "k1", "overloaded_error"),
        Attempt("t-b", "k2", "served")))
    assert routing_fields(route) == {"attempts": 2, "target": "t-b", "upstream_key": "k2"}
    assert routing_fields(Route("asked", "p", "up", None)) == {
        "attempts": None, "target": None, "upstream_key": None}
    assert routing_fields(None) == {"attempts": None, "target": None, "upstream_key": None}


def test_record_usage() -> None:
    r = RequestRecord(0.0, "r", "messages", 200, 0.1, input_tokens=4, cache_read_tokens=1)
    assert r.usage() == {"input_tokens": 4, "cache_read_input_tokens": 1}
