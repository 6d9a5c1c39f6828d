"""The wheel ships the twistd dropin and never Twisted's own package files."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_wheel_contents(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "-w", str(tmp_path), str(REPO)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("txrelay-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "twisted/plugins/txrelay_plugin.py" in names
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    assert "txrelay/py.typed" in names
    for module in ("txrelay/protocol/openai/stream.py", "txrelay/plugins/txrelay_builtin.py",
                   "txrelay/testing.py", "txrelay/upstream/openai.py",
                   "txrelay/protocol/gemini/stream.py", "txrelay/upstream/gemini.py",
                   "txrelay/upstream/vertex_auth.py"):
        assert module in names
