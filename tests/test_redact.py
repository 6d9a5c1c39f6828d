"""The redactor: every configured secret, in every encoding a body quotes, in one pass."""

from __future__ import annotations

import base64
import io
import json
from typing import Any
from urllib.parse import quote, unquote

from hypothesis import given
from hypothesis import strategies as st
from twisted.logger import Logger, LogPublisher, formatEvent, jsonFileLogObserver
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from txrelay.config import parse_config, secret_values
from txrelay.protocol.errors import RelayError
from txrelay.redact import (
    MIN_SUBSTRING,
    PLACEHOLDER,
    RedactingObserver,
    Redactor,
    install_log_redaction,
)

SHAPES = [
    "sk-proj-8fJ2kLmN0pQrStUvWxYz1234567890ab",
    "3f2b8c1e-9d4a-4e6b-a1c2-7f8e9d0a1b2c",
    "tangerinepie",
    "a.b*c+d?(e)[f]{g}|h^$\\1",
    'qu"ote\\back/slash\t\u00e9nd',
]


def _redactor() -> Redactor:
    r = Redactor()
    r.add(*SHAPES)
    return r


def _forms(secret: str) -> list[str]:
    esc = json.dumps(secret)[1:-1]
    return [
        secret,
        esc,
        json.dumps(esc)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        esc.replace("/", "\\/"),
        quote(secret, safe=""),
        base64.b64encode(f"user:{secret}".encode()).decode(),
        base64.b64encode(f"ab:{secret}".encode()).decode(),
        base64.b64encode(f":{secret}".encode()).decode(),
        base64.b64encode(f"{secret}:".encode()).decode(),
        base64.urlsafe_b64encode(f"x{secret}".encode()).decode(),
    ]


def test_every_shape_and_encoding_is_removed() -> None:
    r = _redactor()
    for secret in SHAPES:
        for form in _forms(secret):
            text = f'upstream said: "Incorrect API key provided: {form}" (ok)'
            out = r.redact(text)
            assert form not in out, (secret, form)
            assert PLACEHOLDER in out
            assert out.startswith("upstream said: ")


_TEXT = st.text(st.characters(blacklist_characters="[]redact", blacklist_categories=("Cs",)))


@given(_TEXT.filter(lambda s: len(s) >= MIN_SUBSTRING), _TEXT, _TEXT)
def test_any_secret_in_any_text_is_gone(secret: str, before: str, after: str) -> None:
    r = Redactor()
    r.add(secret)
    out = r.redact(before + secret + after + secret)
    assert secret not in out
    assert PLACEHOLDER in out


@given(_TEXT.filter(lambda s: 1 <= len(s) < MIN_SUBSTRING), _TEXT, _TEXT)
def test_a_short_secret_standing_alone_is_gone(secret: str, before: str, after: str) -> None:
    r = Redactor()
    r.add(secret)
    text = f"{before} {secret} {after}"
    out = r.redact(text)
    assert PLACEHOLDER in out
    assert out.count(secret) < text.count(secret)


def test_a_short_secret_inside_a_word_is_left_alone() -> None:
    r = Redactor()
    r.add("k", "EMPTY")
    assert r.redact("kind key k") == f"kind key {PLACEHOLDER}"
    assert r.redact("Bearer k, EMPTY. EMPTYSET k-means") == (
        f"Bearer {PLACEHOLDER}, {PLACEHOLDER}. EMPTYSET k-means")
    assert r.redact('{"api_key":"EMPTY"}') == f'{{"api_key":"{PLACEHOLDER}"}}'
    r.add("sk-local-long-enough")
    assert r.redact("xsk-local-long-enoughx k") == f"x{PLACEHOLDER}x {PLACEHOLDER}"


def test_unrelated_text_is_untouched_and_no_secrets_is_a_no_op() -> None:
    assert _redactor().redact("model gpt-4o not found") == "model gpt-4o not found"
    empty = Redactor()
    assert empty.redact("sk-anything") == "sk-anything"
    err = RelayError("api_error", "x")
    assert empty.redact_error(err) is err


def test_registering_at_run_time_and_discarding() -> None:
    r = Redactor()
    r.add("oauth-token-one-1234")
    assert r.redact("Bearer oauth-token-one-1234") == f"Bearer {PLACEHOLDER}"
    r.add("oauth-token-two-5678")
    r.discard("oauth-token-one-1234")
    assert r.redact("oauth-token-one-1234 oauth-token-two-5678") == \
        f"oauth-token-one-1234 {PLACEHOLDER}"


def test_longest_secret_wins_when_one_contains_another() -> None:
    r = Redactor()
    r.add("abcdef", "abcdefghij")
    assert r.redact("xxabcdefghijyy") == f"xx{PLACEHOLDER}yy"


def test_error_message_and_headers() -> None:
    r = _redactor()
    err = RelayError("rate_limit_error", f"openai: bad key {SHAPES[1]}",
                     headers=(("retry-after", "1"), ("x-echo", SHAPES[2])))
    out = r.redact_error(err)
    assert SHAPES[1] not in out.message and out.type == "rate_limit_error"
    assert out.status == 429
    assert out.headers == (("retry-after", "1"), ("x-echo", PLACEHOLDER))


def _publish(r: Redactor, emit: Any, fmt: str = "text") -> str:
    out = io.StringIO()
    pub = LogPublisher()
    events: list[dict[str, Any]] = []
    install_log_redaction(pub, r)
    pub.addObserver(events.append)
    if fmt == "json":
        pub.addObserver(jsonFileLogObserver(out))
    emit(Logger(observer=pub))
    text = out.getvalue()
    for e in events:
        text += formatEvent(e)
        if "log_failure" in e:
            text += e["log_failure"].getTraceback()
    return text


def test_log_events_fields_failures_and_objects_are_redacted() -> None:
    r = _redactor()
    key = SHAPES[2]

    class Holder:
        def __repr__(self) -> str:
            return f"<Holder {key}>"

    def emit(log: Logger) -> None:
        log.info("key {k} in {obj!r} and {d}", k=key, obj=Holder(), d={"nested": [key]})
        log.info(f"formatted into the format string: {key}")
        try:
            raise ValueError(f"upstream rejected {key}")
        except ValueError:
            log.failure("while talking upstream")
        log.failure("a failure value", Failure(RuntimeError(SHAPES[3])))

    for fmt in ("text", "json"):
        text = _publish(r, emit, fmt)
        assert "upstream rejected" in text and "ValueError" in text
        for secret in SHAPES:
            assert secret not in text, (fmt, secret)
            assert json.dumps(secret)[1:-1] not in text


def test_credential_headers_are_never_logged_even_unregistered() -> None:
    r = Redactor()
    hdrs = Headers({b"Authorization": [b"Bearer unknown-client-key"], b"Accept": [b"x"]})

    def emit(log: Logger) -> None:
        log.info("headers {h} {d} {p}", h=hdrs,
                 d={"x-api-key": "wrong-key-1", "X-Goog-Api-Key": "g", "accept": "ok"},
                 p=[("authorization", "Basic Zm9vOmJhcg==")])

    text = _publish(r, emit)
    for leaked in ("unknown-client-key", "wrong-key-1", "Zm9vOmJhcg=="):
        assert leaked not in text
    assert "ok" in text


def test_wrapping_observer_copies_the_event() -> None:
    seen: list[dict[str, Any]] = []
    r = _redactor()
    obs = RedactingObserver(seen.append, r)
    event = {"log_format": "{k}", "k": SHAPES[0]}
    obs(event)
    assert event["k"] == SHAPES[0]
    assert formatEvent(seen[0]) == PLACEHOLDER


def test_secret_values_of_a_configuration(tmp_path: Any) -> None:
    keyfile = tmp_path / "client.key"
    keyfile.write_text("file-client-key-77\n")
    cfg = parse_config({
        "keys": [{"name": "a", "env": "CLIENT_A"}, {"name": "b", "file": str(keyfile)},
                 {"name": "c", "sha256": "0" * 64}],
        "server": {"admin_keys": [{"name": "ops", "env": "ADMIN"}]},
        "providers": [{
            "name": "up", "kind": "openai-chat", "base_url": "https://u:pw-in-url@h.example/v1",
            "api_key": {"env": "UP_KEY"},
            "headers": {"X-Custom-Token": "Bearer hdr-token-9", "HTTP-Referer": "https://x"},
        }],
        "models": [{"id": "m", "provider": "up"}],
        "pipeline": [{"type": "translate"}],
    }, env={"CLIENT_A": "env-client-key", "UP_KEY": "upstream-key", "ADMIN": "admin-key"})
    values = set(secret_values(cfg, {"CLIENT_A": "env-client-key", "ADMIN": "admin-key"}))
    assert {"env-client-key", "file-client-key-77", "admin-key", "upstream-key",
            "Bearer hdr-token-9", "hdr-token-9", "u:pw-in-url", "pw-in-url"} <= values
    assert "https://x" not in values


@given(_TEXT.filter(lambda s: len(s) >= 6), _TEXT, _TEXT)
def test_quoted_forms_never_decode_back_to_the_secret(secret: str, user: str, rest: str) -> None:
    r = Redactor()
    r.add(secret)
    if len(secret) < MIN_SUBSTRING:  # quoted forms of a short secret: only standing alone
        user, rest = f"{user} ", f" {rest}"
    # JSON (ASCII-escaped or not): what is left decodes to text without the secret.
    for ascii_only in (True, False):
        out = r.redact(json.dumps({"message": f"{user}{secret}{rest}"}, ensure_ascii=ascii_only))
        assert secret not in out
        try:
            decoded = json.loads(out)["message"]
        except ValueError:
            continue  # the match took a digit of a \uXXXX escape: broken, not leaking
        assert secret not in decoded
    # Percent-encoded in a URL.
    assert secret not in unquote(r.redact(quote(f"{user}{secret}{rest}", safe="")))
    # HTTP Basic: base64 of "user:secret", whatever the user name's length.
    encoded = base64.b64encode(f"{user}:{secret}".encode()).decode()
    out = r.redact(encoded)
    assert PLACEHOLDER in out
    for piece in out.split(PLACEHOLDER):
        for offset in range(4):  # what is left, decoded at each alignment
            usable = piece[offset:][: (len(piece) - offset) // 4 * 4]
            assert secret.encode() not in base64.b64decode(usable, validate=False)
