# -*- test-case-name: tests.ledger.test_report -*-
"""
``txrelay usage``: totals of the ledger per key, model, provider or session over a period,
read straight from its database (no relay needed), printed as a table or JSON.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence
from typing import Any

import attrs

from txrelay.ledger import schema

#: ``--by`` names → the column (expression) they group by.
GROUPS = {
    "key": "key_name",
    "model": "COALESCE(model_served, model_requested)",
    "requested": "model_requested",
    "provider": "provider",
    "session": "session_id",
}
#: The totals of each group, in output order, with their SQL.
TOTALS = (
    ("requests", "COUNT(*)"),
    ("errors", "SUM(CASE WHEN error_type IS NOT NULL THEN 1 ELSE 0 END)"),
    ("input_tokens", "SUM(input_tokens)"),
    ("output_tokens", "SUM(output_tokens)"),
    ("cache_read_tokens", "SUM(cache_read_tokens)"),
    ("cache_creation_tokens", "SUM(cache_creation_tokens)"),
    ("thinking_tokens", "SUM(thinking_tokens)"),
    ("spend_usd", "SUM(spend_usd)"),
)


@attrs.frozen
class Period:
    """``[since, until)`` in UTC; either end may be open."""

    since: datetime.datetime | None = None
    until: datetime.datetime | None = None

    def label(self) -> dict[str, str | None]:
        """The ends as ISO 8601 text."""
        return {"since": None if self.since is None else self.since.isoformat(),
                "until": None if self.until is None else self.until.isoformat()}


def parse_time(text: str) -> datetime.datetime:
    """A date (``2026-12-01``, midnight) or a date and time, UTC unless it says otherwise."""
    try:
        value = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a date (YYYY-MM-DD) or an ISO 8601 time") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=datetime.UTC)


def period(*, since: str | None = None, until: str | None = None, today: bool = False,
           month: bool = False, now: datetime.datetime | None = None) -> Period:
    """The period the options name (``today``/``month``: the current UTC day or month)."""
    now = now or datetime.datetime.now(datetime.UTC)
    if today or month:
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        if month:
            start = start.replace(day=1)
            end = (start + datetime.timedelta(days=32)).replace(day=1)
        else:
            end = start + datetime.timedelta(days=1)
        return Period(start, end)
    return Period(None if since is None else parse_time(since),
                  None if until is None else parse_time(until))


def query(dialect: schema.Dialect, by: Sequence[str], when: Period) -> tuple[str, list[Any]]:
    """The SELECT of the totals grouped ``by`` over ``when``, and its parameters."""
    groups = [GROUPS[name] for name in by]
    where, params = [], []
    if when.since is not None:
        where.append(f"at >= {dialect.mark}")
        params.append(dialect.time(when.since.timestamp()))
    if when.until is not None:
        where.append(f"at < {dialect.mark}")
        params.append(dialect.time(when.until.timestamp()))
    columns = [f"{g} AS g{i}" for i, g in enumerate(groups)] + [sql for _, sql in TOTALS]
    sql = f"SELECT {', '.join(columns)} FROM {schema.TABLE}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    if groups:
        keys = ", ".join(f"g{i}" for i in range(len(groups)))
        sql += f" GROUP BY {keys} ORDER BY {keys}"
    return sql, params


def totals(cursor: Any, dialect: schema.Dialect, by: Sequence[str],
           when: Period) -> list[dict[str, Any]]:
    """One dict per group: the ``by`` names, then :data:`TOTALS` (ints; spend a float)."""
    sql, params = query(dialect, by, when)
    cursor.execute(sql, params)
    rows = []
    for found in cursor.fetchall():
        row: dict[str, Any] = dict(zip(by, found[:len(by)], strict=True))
        for (name, _), value in zip(TOTALS, found[len(by):], strict=True):
            if name == "spend_usd":
                row[name] = None if value is None else round(float(value), 6)
            else:
                row[name] = int(value or 0)
        rows.append(row)
    return rows


def grand_total(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The sum of every group's totals."""
    out: dict[str, Any] = {}
    for name, _ in TOTALS:
        values = [r[name] for r in rows if r[name] is not None]
        if name == "spend_usd":
            out[name] = round(sum(values), 6) if values else None
        else:
            out[name] = sum(values)
    return out


_HEADINGS = {"requests": "requests", "errors": "errors", "input_tokens": "input",
             "output_tokens": "output", "cache_read_tokens": "cache read",
             "cache_creation_tokens": "cache write", "thinking_tokens": "thinking",
             "spend_usd": "spend USD"}


def table(rows: Sequence[dict[str, Any]], by: Sequence[str]) -> str:
    """``rows`` as an aligned text table, with a total line."""
    head = [*by, *(_HEADINGS[n] for n, _ in TOTALS)]

    def cells(row: dict[str, Any], names: Sequence[str | None]) -> list[str]:
        out = [str(row[name]) if name in row and row[name] is not None else
               ("-" if name is not None else "") for name in names]
        for name, _ in TOTALS:
            value = row[name]
            out.append("-" if value is None else f"{value:.4f}" if name == "spend_usd"
                       else f"{value:,}")
        return out

    body = [cells(r, by) for r in rows]
    total = grand_total(rows)
    last = cells(total, [None] * len(by))
    if by:
        last[0] = "total"
    lines = [head, *body, last]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = []
    for j, line in enumerate(lines):
        text.append("  ".join(c.ljust(w) if i < len(by) else c.rjust(w)
                              for i, (c, w) in enumerate(zip(line, widths, strict=True))))
        if j == 0 or j == len(lines) - 2:
            text.append("  ".join("-" * w for w in widths))
    return "\n".join(t.rstrip() for t in text)


_URI_PASSWORD = re.compile(r"^[a-z][a-z0-9+.-]*://[^:/@]*:([^@/]+)@", re.IGNORECASE)
_KV_PASSWORD = re.compile(r"(?:^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")


def dsn_secrets(dsn: str) -> list[str]:
    """The DSN and the password in it, for redaction."""
    out = [dsn]
    for pattern in (_URI_PASSWORD, _KV_PASSWORD):
        m = pattern.search(dsn)
        if m:
            out.append(m.group(1).strip("'"))
    return out
