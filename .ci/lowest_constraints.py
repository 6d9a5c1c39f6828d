"""
Print pip constraints pinning every runtime dependency to the floor setup.cfg admits.

CI installs the package once with these constraints and runs the suite, so a floor in
``install_requires`` can never claim a version the code does not work with.
"""

from __future__ import annotations

import configparser
import re
import sys
from pathlib import Path

_FLOOR = re.compile(r"^\s*([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*>=\s*([0-9][^,\s;]*)")


def main() -> int:
    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).resolve().parent.parent / "setup.cfg")
    missing = []
    for line in cfg["options"]["install_requires"].strip().splitlines():
        if not line.strip():
            continue
        m = _FLOOR.match(line)
        if m is None:
            missing.append(line.strip())
            continue
        print(f"{m.group(1)}=={m.group(2)}")
    if missing:
        print("no >= floor in: " + ", ".join(missing), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
