"""A relay built from an offline openai-chat configuration does not load what it does not use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

#: Modules an openai-chat relay without optional stages has no use for (backends it does not
#: configure, stages it does not run, and their third-party dependencies).
HEAVY = (
    "jsonschema",
    "json_repair",
    "txrelay.upstream.gemini",
    "txrelay.upstream.anthropic",
    "txrelay.upstream.vertex_auth",
    "txrelay.protocol.gemini",
    "txrelay.stages.toolhygiene",
    "txrelay.stages.toolintercept",
    "txrelay.stages.limits",
    "txrelay.stages.identity",
    "txredisapi",
    "psycopg",
    "sqlite3",
    "pypdf",
    "bs4",
    "google",
    "requests",
)

_CONFIG = """
[server]
listen = ["tcp:0:interface=127.0.0.1"]

[[keys]]
name = "k"
sha256 = "{sha}"

[[providers]]
name = "up"
kind = "openai-chat"
base_url = "http://127.0.0.1:9/v1"
api_key = {{ env = "LAZY_TEST_UPSTREAM_KEY" }}
options = {{ dialect = "openai" }}

[[models]]
id = "m"
provider = "up"
upstream_model = "u"

[[pipeline]]
type = "auth"
[[pipeline]]
type = "model-map"
{extra}
[[pipeline]]
type = "translate"
"""

# Build the relay as `txrelay serve` does (without listening), then list what is loaded.
_PROBE = textwrap.dedent("""
    import builtins, json, sys, traceback
    # Who imported each top-level package first, so that a failure names the culprit.
    first = {}
    _import = builtins.__import__
    def _recording(name, *args, **kwargs):
        top = name.partition(".")[0]
        if top not in sys.modules and top not in first:
            first[top] = "".join(traceback.format_stack(limit=12)[:-1])
        return _import(name, *args, **kwargs)
    builtins.__import__ = _recording
    from twisted.internet import reactor
    from txrelay.config import ConfigError
    from txrelay.service import build_app
    from txrelay.tap import load_checked
    try:
        build_app(load_checked(sys.argv[1]), reactor, sys.argv[1])
    except ConfigError as e:
        print(json.dumps({"error": str(e)}))
    else:
        print(json.dumps({"modules": sorted(sys.modules), "first": first}))
""")


def _probe(tmp_path: Path, extra: str = "") -> dict[str, object]:
    path = tmp_path / "relay.toml"
    path.write_text(_CONFIG.format(sha="0" * 64, extra=extra))
    out = subprocess.run([sys.executable, "-c", _PROBE, str(path)], capture_output=True,
                         text=True, timeout=120, check=True,
                         # A fresh relay's environment: nothing another test left behind.
                         cwd=tmp_path,
                         env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                              "HOME": str(tmp_path), "LAZY_TEST_UPSTREAM_KEY": "sk-test"})
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _floor_modules(tmp_path: Path) -> list[str]:
    """The modules a bare ``import treq`` loads, in the same kind of fresh process."""
    out = subprocess.run([sys.executable, "-c",
                          "import json, sys, treq; print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, timeout=120, check=True, cwd=tmp_path,
                         env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                              "HOME": str(tmp_path)})
    modules: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return modules


def _loaded(modules: object, name: str) -> bool:
    assert isinstance(modules, list)
    return any(m == name or m.startswith(name + ".") for m in modules)


def test_offline_openai_relay_does_not_import_heavy_modules(tmp_path: Path) -> None:
    """Only the configured backend and stages are imported."""
    result = _probe(tmp_path)
    assert "error" not in result
    modules = result["modules"]
    assert _loaded(modules, "txrelay.upstream.openai")
    assert _loaded(modules, "txrelay.stages.translate")
    # What treq itself pulls in is not ours to avoid (treq 24.9, the floor, imports requests).
    floor = _floor_modules(tmp_path)
    heavy = [m for m in HEAVY if _loaded(modules, m) and not _loaded(floor, m)]
    first = result.get("first")
    assert isinstance(first, dict)
    assert heavy == [], "\n".join(f"{m} first imported from:\n{first.get(m.partition('.')[0])}"
                                   for m in heavy)


@pytest.mark.parametrize(("extra", "module"), [
    ('[[pipeline]]\ntype = "tool-hygiene"', "jsonschema"),
    ('[[pipeline]]\ntype = "identity-guard"', "txrelay.stages.identity"),
])
def test_configured_stage_is_imported(tmp_path: Path, extra: str, module: str) -> None:
    """A stage the configuration names is loaded at start-up (the probe is not vacuous)."""
    result = _probe(tmp_path, extra)
    assert "error" not in result
    assert _loaded(result["modules"], module)


def test_bad_options_of_a_lazy_stage_are_reported_at_start_up(tmp_path: Path) -> None:
    """Lazy loading does not postpone option checking to the first request."""
    result = _probe(tmp_path, '[[pipeline]]\ntype = "limits"\noptions = { no_such_option = 1 }')
    assert "no_such_option" in str(result.get("error"))
