"""
The systemd units in ``contrib/systemd`` (issue 11.5): hardening that leaves outbound TLS
working, reload by SIGHUP, readiness by notify, secrets as credentials; and the
``contrib/systemd/verify`` check CI runs, which fails on a unit systemd would warn about.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parent.parent / "contrib" / "systemd"


def settings(path: Path) -> dict[str, list[str]]:
    """Every ``Key=value`` of a unit file, values in order (comments dropped)."""
    out: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key, []).append(value)
    return out


def test_the_service_reloads_notifies_and_keeps_outbound_tls_working() -> None:
    unit = settings(UNITS / "txrelay.service")
    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["ExecStart"][0].split()[1:4] == ["-n", "--pidfile=", "relay"]
    families = unit["RestrictAddressFamilies"][0].split()
    assert {"AF_INET", "AF_INET6", "AF_UNIX"} <= set(families)
    for breaks_tls in ("PrivateNetwork", "IPAddressDeny", "MemoryDenyWriteExecute",
                       "InaccessiblePaths", "TemporaryFileSystem"):
        assert breaks_tls not in unit, breaks_tls
    # The CA store stays readable: /etc is read-only under strict, not hidden.
    assert unit["ProtectSystem"] == ["strict"]
    assert not any("/etc" in v for v in unit.get("ReadOnlyPaths", []) + unit.get(
        "InaccessiblePaths", []))


def test_the_credentials_drop_in_loads_credentials() -> None:
    drop_in = settings(UNITS / "txrelay.service.d" / "credentials.conf")
    names = [v.split(":", 1)[0] for v in drop_in["LoadCredential"]]
    assert names == ["openai-key", "admin-key"]
    assert all(v.split(":", 1)[1].startswith("/etc/txrelay/credentials/")
               for v in drop_in["LoadCredential"])


needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (.ci/run installs it and runs the check)")


def run_verify(units: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(units / "verify")], capture_output=True, text=True,
                          check=False, timeout=120)


@needs_systemd_analyze
def test_the_units_pass_systemd_analyze_verify() -> None:
    done = run_verify(UNITS)
    assert done.returncode == 0, done.stderr
    assert "2 unit(s) OK" in done.stdout


@needs_systemd_analyze
@pytest.mark.parametrize("breakage", [
    ("txrelay.socket", "ListenStream=127.0.0.1:8080", "ListenStrem=127.0.0.1:8080"),
    ("txrelay.service", "Type=notify", "Type=notifyy"),
    ("txrelay.service.d/credentials.conf", "LoadCredential=", "LoadCredentials="),
])
def test_verify_fails_on_a_broken_unit(tmp: Path, breakage: tuple[str, str, str]) -> None:
    name, old, new = breakage
    copy = tmp / "systemd"
    shutil.copytree(UNITS, copy)
    text = (copy / name).read_text()
    assert old in text
    (copy / name).write_text(text.replace(old, new, 1))
    done = run_verify(copy)
    assert done.returncode == 1
    assert f"contrib/systemd/{name}" in done.stderr
