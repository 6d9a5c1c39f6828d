# -*- test-case-name: tests.stages.test_limits_pure -*-
"""
The sans-IO parts of the ``limits`` stage (issue 12.4): sliding-window arithmetic, UTC budget
periods, model prices and the ``anthropic-ratelimit-*`` headers. No Twisted, no store: the
stage (:mod:`txrelay.stages.limits`) feeds them numbers it read from the state store.
"""
