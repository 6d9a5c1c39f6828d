"""
Run a Python program with cProfile switched on and off by signals, so a profile covers only
the workload and not the start-up (imports dominate otherwise).

``python bench/profiled.py OUT.prof -m module args...``, ``... OUT.prof -c CODE args...`` or
``... OUT.prof script.py args...``:
SIGUSR1 enables the profiler, SIGUSR2 disables it and writes ``OUT.prof``. bench/instr.py
(``--tool cprofile``) uses it for the per-layer breakdown.
"""

from __future__ import annotations

import cProfile
import runpy
import signal
import sys
import time
from typing import Any


def main() -> None:
    """Entry point."""
    out, rest = sys.argv[1], sys.argv[2:]
    # CPU time, not wall time: on a shared machine a descheduled relay is not busy.
    prof = cProfile.Profile(time.process_time)

    def on(_s: int, _f: Any) -> None:
        prof.enable()

    def off(_s: int, _f: Any) -> None:
        prof.disable()
        prof.dump_stats(out)

    signal.signal(signal.SIGUSR1, on)
    signal.signal(signal.SIGUSR2, off)
    if rest[0] == "-c":
        sys.argv = ["-c", *rest[2:]]
        exec(compile(rest[1], "<-c>", "exec"), {"__name__": "__main__"})
    elif rest[0] == "-m":
        sys.argv = [rest[1], *rest[2:]]
        runpy.run_module(rest[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = rest
        runpy.run_path(rest[0], run_name="__main__")


if __name__ == "__main__":
    main()
