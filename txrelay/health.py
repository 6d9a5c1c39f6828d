# -*- test-case-name: tests.test_health -*-
"""
What ``GET /health/ready`` says beyond "serving" or "draining": components (the state
store, circuit breakers, …) report their condition here, and the endpoint shows every report
under ``detail``. One :class:`Health` lives as long as the process, across reloads.
"""

from __future__ import annotations

from typing import Any

import attrs


@attrs.frozen
class Report:
    """One component's condition: whether it lets the relay serve, and what to show."""

    ready: bool
    detail: Any


@attrs.define(eq=False)
class Health:
    """The latest report of each component, by name."""

    _reports: dict[str, Report] = attrs.field(factory=dict, init=False)

    def report(self, name: str, detail: Any, *, ready: bool = True) -> None:
        """Record ``name``'s condition (replacing its last report). ``detail`` must be
        JSON-serialisable; ``ready=False`` turns readiness 503."""
        self._reports[name] = Report(ready, detail)

    def clear(self, name: str) -> None:
        """Forget ``name``'s report (a component that was removed by a reload)."""
        self._reports.pop(name, None)

    @property
    def ready(self) -> bool:
        """Whether no component holds the relay back."""
        return all(r.ready for r in self._reports.values())

    def detail(self) -> dict[str, Any]:
        """Every component's detail, by name (sorted, for stable output)."""
        return {name: self._reports[name].detail for name in sorted(self._reports)}
