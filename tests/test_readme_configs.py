"""The configuration examples in the README are valid (checked like `txrelay check-config`)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from txrelay.config import parse_config
from txrelay.service import build_app

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```toml\n(.*?)```", README, re.S)


def test_readme_has_the_upstream_examples() -> None:
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("block", BLOCKS)
def test_readme_toml_block_is_a_valid_provider_config(block: str, tmp_path: Path) -> None:
    raw = tomllib.loads(block)
    secrets = tmp_path / "secret"
    secrets.write_text("k")
    for provider in raw.get("providers", []):
        if "file" in provider.get("api_key", {}):
            provider["api_key"]["file"] = str(secrets)
        options = provider.get("options", {})
        if "credentials_file" in options:  # a service account key, made here
            from tests.fakegemini import service_account_file

            options["credentials_file"] = str(tmp_path / "sa.json")
            service_account_file(tmp_path / "sa.json", "https://oauth2.googleapis.com/token")
        if "tls" in provider:  # the README's paths, made here
            from tests.tlsfixtures import issue, make_ca

            ca = make_ca(tmp_path)
            client = issue(tmp_path, "client", ca, cn="relay", client=True)
            provider["tls"] |= {"ca_file": str(ca.cert), "client_cert": str(client.cert),
                                "client_key": str(client.key)}
    if "tls" in raw.get("state", {}):
        from tests.tlsfixtures import issue, make_ca

        ca = make_ca(tmp_path, "state-ca")
        client = issue(tmp_path, "state-client", ca, cn="relay", client=True)
        raw["state"]["tls"] |= {"ca_file": str(ca.cert), "client_cert": str(client.cert),
                                "client_key": str(client.key)}
    raw.setdefault("pipeline", [{"type": "model-map"}, {"type": "translate"}])
    env = {"OPENAI_API_KEY": "k", "OPENAI_API_KEY_2": "k", "DEEPSEEK_API_KEY": "k",
           "GEMINI_API_KEY": "k"}
    cfg = parse_config(raw, "README", env=env)
    build_app(cfg, None, "README")
