"""
Secrets from systemd credentials (issue 11.5): ``credential = "name"`` on provider API keys,
client keys and admin keys reads ``$CREDENTIALS_DIRECTORY/name``, as ``LoadCredential=``
provides it, with a clear error when the variable is unset or the file missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from txrelay.config import ConfigError, hash_key, key_digests, parse_config, secret_values


def raw_config(**server: Any) -> dict[str, Any]:
    return {
        "providers": [{"name": "up", "kind": "openai-chat", "base_url": "https://x.example/v1",
                       "api_key": {"credential": "upstream-key"}}],
        "models": [{"id": "m", "provider": "up"}],
        "pipeline": [{"type": "auth"}, {"type": "translate"}],
        "keys": [{"name": "alice", "credential": "client-key"}],
        "server": {"admin_keys": [{"name": "ops", "credential": "admin-key"}], **server},
    }


def problems_of(raw: dict[str, Any], env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env=env)
    return info.value.problems


def test_credentials_are_read_from_the_credentials_directory(tmp: Path) -> None:
    (tmp / "upstream-key").write_text("sk-upstream-secret\n")
    (tmp / "client-key").write_text("client-secret")
    (tmp / "admin-key").write_text("admin-secret")
    env = {"CREDENTIALS_DIRECTORY": str(tmp)}
    cfg = parse_config(raw_config(), env=env)
    assert cfg.providers[0].api_key is not None
    assert cfg.providers[0].api_key.value == "sk-upstream-secret"
    assert key_digests(cfg, env)[0] == {"alice": bytes.fromhex(hash_key("client-secret"))}
    assert set(secret_values(cfg, env)) == {"sk-upstream-secret", "client-secret",
                                            "admin-secret"}
    assert "sk-upstream-secret" not in repr(cfg)


def test_an_unset_credentials_directory_is_named(tmp: Path) -> None:
    problems = problems_of(raw_config(), env={})
    assert problems == [
        "server.admin_keys[0].credential: credential 'admin-key' needs "
        "$CREDENTIALS_DIRECTORY, which is not set (systemd sets it for a unit with "
        "LoadCredential=)",
        "providers[0].api_key.credential: credential 'upstream-key' needs "
        "$CREDENTIALS_DIRECTORY, which is not set (systemd sets it for a unit with "
        "LoadCredential=)",
        "keys[0].credential: credential 'client-key' needs $CREDENTIALS_DIRECTORY, which "
        "is not set (systemd sets it for a unit with LoadCredential=)",
    ]


def test_a_missing_credential_file_and_a_bad_name_are_named(tmp: Path) -> None:
    raw = raw_config()
    raw["keys"] = [{"name": "alice", "credential": "../etc/passwd"}]
    (tmp / "admin-key").write_text("admin-secret")
    problems = problems_of(raw, env={"CREDENTIALS_DIRECTORY": str(tmp)})
    assert problems[0].startswith(f"providers[0].api_key.credential: cannot read "
                                  f"{tmp / 'upstream-key'}: ")
    assert problems[1] == "keys[0].credential: '../etc/passwd' is not a credential name"
    assert len(problems) == 2


def test_one_source_per_secret() -> None:
    raw = raw_config()
    raw["providers"][0]["api_key"] = {"credential": "a", "env": "B"}
    raw["keys"] = [{"name": "alice", "credential": "a", "sha256": hash_key("x")}]
    raw["server"] = {}
    problems = problems_of(raw, env={})
    assert problems == [
        "providers[0].api_key: give exactly one of env, file or credential",
        "keys[0]: give exactly one of sha256, env, file or credential",
    ]
