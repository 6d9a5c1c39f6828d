"""setup.cfg lists every package of the source tree, so a wheel never lacks one."""

from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_is_listed_in_setup_cfg() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for p in ROOT.glob("txrelay/**/__init__.py")}
    assert "txrelay.protocol.openai" in found
    assert found - listed == set()
