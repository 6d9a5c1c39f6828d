"""
Shared state: the counters, slots and records that limits, quotas, circuit breakers, cache
affinity and managed client keys keep, behind :class:`~txrelay.state.interfaces.IStateStore`
(in-process by default, Redis for a fleet).
"""
