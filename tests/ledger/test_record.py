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
    assert routing_fields({"attempts": 2, "target": "b/m" * 300}) == {
        "attempts": 2, "target": ("b/m" * 300)[:200]}
    assert routing_fields({"attempts": "2", "target": 3}) == {"attempts": None, "target": None}


def test_record_usage() -> None:
    r = RequestRecord(0.0, "r", "messages", 200, 0.1, input_tokens=4, cache_read_tokens=1)
    assert r.usage() == {"input_tokens": 4, "cache_read_input_tokens": 1}
