"""Every ``test-case-name`` header names test modules that exist (issue 7.16)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER = re.compile(r"#\s*-\*-\s*test-case-name:\s*(\S+)\s*-\*-")


def test_test_case_name_headers_point_at_real_tests() -> None:
    seen = 0
    stale: list[str] = []
    for path in sorted([*ROOT.glob("txrelay/**/*.py"), *ROOT.glob("twisted/plugins/*.py")]):
        m = HEADER.search(path.read_text("utf-8").split("\n", 1)[0])
        if m is None:
            continue
        for name in m.group(1).split(","):
            seen += 1
            target = ROOT / name.replace(".", "/")
            if not (target.with_suffix(".py").is_file() or (target / "__init__.py").is_file()):
                stale.append(f"{path.relative_to(ROOT)}: {name}")
    assert seen > 10  # the headers are there to be checked
    assert stale == []
