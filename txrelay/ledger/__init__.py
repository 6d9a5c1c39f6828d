# -*- test-case-name: tests.ledger.test_ledger -*-
"""
The usage ledger: one :class:`~txrelay.ledger.record.RequestRecord` per request, queued in
memory and written in batches, off the request path, to SQLite or PostgreSQL
(:mod:`txrelay.ledger.writer`, :mod:`txrelay.ledger.sinks`); ``txrelay usage`` reads the
totals back (:mod:`txrelay.ledger.report`). Prices per model (:mod:`txrelay.ledger.prices`)
turn token counts into spend.
"""
