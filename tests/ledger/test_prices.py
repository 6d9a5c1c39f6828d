"""Prices per model: glob lookup order, cost arithmetic, cache defaults, config problems."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from txrelay.config import ConfigError, parse_config
from txrelay.ledger.prices import Price, PriceTable


def test_first_matching_name_and_entry_wins() -> None:
    table = PriceTable((Price("claude-sonnet-*", 3, 15), Price("claude-*", 1, 5),
                        Price("gpt-*", 2, 8)))
    assert table.find("claude-sonnet-4-6") == table.prices[0]
    assert table.find(None, "claude-haiku") == table.prices[1]
    assert table.find("local-model", "gpt-4o", "claude-x") == table.prices[2]
    assert table.find("nothing", None) is None
    assert table.cost({"input_tokens": 10}, "nothing") is None
    assert table.cost(None, "gpt-4o") is None


def test_cost_with_cache_defaults() -> None:
    price = Price("m", input=10.0, output=20.0)
    usage = {"input_tokens": 1_000_000, "output_tokens": 500_000,
             "cache_read_input_tokens": 1_000_000, "cache_creation_input_tokens": 1_000_000}
    assert price.cost(usage) == pytest.approx(10 + 10 + 1 + 12.5)
    explicit = Price("m", input=10.0, output=20.0, cache_read=0.0, cache_write=10.0)
    assert explicit.cost(usage) == pytest.approx(10 + 10 + 0 + 10)
    assert price.cost({"input_tokens": "many", "output_tokens": -5}) == 0


@given(st.dictionaries(st.sampled_from(["input_tokens", "output_tokens",
                                        "cache_read_input_tokens"]),
                       st.integers(0, 10**9)))
def test_cost_is_linear(usage: dict[str, int]) -> None:
    price = Price("m", input=3.0, output=15.0)
    doubled = {k: 2 * v for k, v in usage.items()}
    assert price.cost(doubled) == pytest.approx(2 * price.cost(usage))


def _parse(extra: dict[str, object]) -> object:
    raw = {"providers": [{"name": "demo", "kind": "demo"}],
           "models": [{"id": "m", "provider": "demo"}],
           "pipeline": [{"type": "translate"}], **extra}
    return parse_config(raw, "t.toml", env={})


def test_price_and_ledger_problems_name_their_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        _parse({"prices": [{"model": "a", "input": -1}, {"model": "a"}, {"model": ""}],
                "ledger": {"kind": "postgres", "batch_size": 0, "max_queue": 0,
                           "flush_interval": 0}})
    problems = e.value.problems
    assert "prices[0].input: must be a price in USD per million tokens, at least 0" in problems
    assert "prices[1].model: 'a' is priced twice" in problems
    assert "prices[2].model: must name a model or a glob" in problems
    assert "ledger.batch_size: must be between 1 and 10000" in problems
    assert "ledger.flush_interval: must be between 0 and 3600 seconds" in problems
    assert any(p.startswith("ledger.dsn: ") for p in problems)
    with pytest.raises(ConfigError) as e:
        _parse({"ledger": {"path": str(tmp_path / "no" / "such" / "u.db")}})
    assert e.value.problems == [
        f"ledger.path: the directory {str(tmp_path / 'no' / 'such')!r} does not exist"]
    with pytest.raises(ConfigError) as e:
        _parse({"ledger": {"kind": "mysql"}})
    assert e.value.problems[0].startswith("ledger.kind")


def test_ledger_defaults() -> None:
    cfg = _parse({"ledger": {"kind": "off"}})
    assert cfg.ledger is not None and cfg.ledger.kind == "off"  # type: ignore[attr-defined]
    assert _parse({}).ledger is None  # type: ignore[attr-defined]


def test_the_example_blocks_are_valid_when_uncommented(tmp_path: Path) -> None:
    import tomllib

    text = (Path(__file__).resolve().parents[2] / "config.example.toml").read_text()
    start = text.index("# [ledger]")
    block = text[start:text.index("\n# ──", start)]
    lines = [line[2:] for line in block.splitlines()
             if line.startswith("# ") and not line.startswith("# #")]
    raw = tomllib.loads("\n".join(line for line in lines if "=" in line or "[" in line))
    raw["ledger"]["path"] = str(tmp_path / raw["ledger"]["path"])
    cfg = _parse(raw)
    assert cfg.ledger.kind == "sqlite"  # type: ignore[attr-defined]
    assert cfg.prices[0].cache_write == 3.75  # type: ignore[attr-defined]


def test_the_dsn_and_its_password_are_secrets() -> None:
    from txrelay.config import secret_values

    raw = {"providers": [{"name": "demo", "kind": "demo"}],
           "models": [{"id": "m", "provider": "demo"}], "pipeline": [{"type": "translate"}],
           "ledger": {"kind": "postgres", "dsn": {"env": "DSN"}}}
    dsn = "postgresql://relay:pa55word@db.internal/usage"
    cfg = parse_config(raw, "t.toml", env={"DSN": dsn})
    assert cfg.ledger is not None and cfg.ledger.dsn is not None
    assert cfg.ledger.dsn.value == dsn and "pa55word" not in repr(cfg)
    assert {dsn, "pa55word"} <= set(secret_values(cfg, env={}))
