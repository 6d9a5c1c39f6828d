# -*- test-case-name: tests.routing.test_policy -*-
"""
Routes with fallbacks, upstream key pools and cache affinity (issue 12, items 1 to 3).

The decisions (which target next, how long to wait, whether a breaker lets a request
through, which conversation a request belongs to) are sans-IO in :mod:`.policy`,
:mod:`.breaker`, :mod:`.affinity` and :mod:`.keys`; :mod:`.router` applies them to one
exchange, keeping breaker, key and affinity state in the shared state store.
"""
