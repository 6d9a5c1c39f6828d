# -*- test-case-name: tests.test_redact -*-
"""
Removing secret values from everything that reaches a client or a log.

The relay knows every secret it was configured with (client keys given by environment
variable or file, upstream API keys, credentials in provider headers or URLs) and a backend
can register more while it runs (an OAuth token it fetched). A :class:`Redactor` holds that
set and replaces each value, verbatim, wherever it appears — whatever its shape — together
with the encodings a body is likely to quote it in: JSON-escaped (also twice, for an error
quoted inside an error), percent-encoded, and base64 (any alignment, so ``user:secret`` and
``secret:`` in an ``Authorization: Basic`` header are caught whatever the user name).

It is applied at the output boundaries: each error body and ``event: error`` a client gets
(:func:`redact_error`), and each log event (:func:`install_log_redaction` for the global log
publisher, :class:`RedactingObserver` to wrap one observer). Log events also never carry the
values of credential headers (:data:`SENSITIVE_HEADERS`), registered or not.

Guessing at key shapes (``sk-…``) is not enough: an upstream key may be a UUID or a word.
A short one (under :data:`MIN_SUBSTRING` characters) is replaced only where it stands alone,
so a placeholder key such as ``EMPTY`` or ``x`` leaves the words that happen to contain it
alone; its base64 forms, which sit inside longer base64 text by nature, are replaced anywhere.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus

import attrs
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from zope.interface import implementer

from txrelay.protocol.errors import RelayError

#: What a secret is replaced with.
PLACEHOLDER = "[redacted]"

#: Header names whose values are never logged (compared in lower case).
SENSITIVE_HEADERS = frozenset({
    "authorization", "proxy-authorization", "x-api-key", "api-key", "x-goog-api-key",
    "cookie", "set-cookie", "x-auth-token",
})

#: Secrets shorter than this have no base64 forms (their base64 core would be too short to
#: be specific).
_MIN_BASE64 = 6
#: Secrets shorter than this (and their quoted forms) are replaced only where they stand alone,
#: not inside a longer run of letters, digits, ``_`` or ``-``: a local server's key ``x`` or
#: ``EMPTY`` must not rewrite every word that holds it.
MIN_SUBSTRING = 8
_WORD = "0-9A-Za-z_-"
#: Where a short secret may start: after a non-word character, or after an escape that ends
#: in one (``%20``, ``\n``, ``\u00e9``) in a percent-encoded or JSON text.
_ALONE = (rf"(?:(?<![{_WORD}])|(?<=%[0-9A-Fa-f]{{2}})|(?<=\\[nrtbf])"
          rf"|(?<=\\u[0-9A-Fa-f]{{4}}))")
_PERCENT = re.compile(r"%[0-9A-F]{2}")


def _base64_cores(raw: bytes) -> set[str]:
    """
    The base64 text that encodes ``raw`` whatever precedes and follows it.

    For each of the three alignments of ``raw`` in the encoded bytes, the characters that
    depend only on its own bits are the same for any prefix of that length modulo 3 (and any
    suffix): ``base64("user:" + secret)`` contains one of these three strings.
    """
    out: set[str] = set()
    for pad, skip in ((0, 0), (1, 2), (2, 3)):
        encoded = base64.b64encode(b"\0" * pad + raw).decode("ascii")
        total = pad + len(raw)
        end = 4 * (total // 3) + (0, 1, 2)[total % 3]
        core = encoded[skip:end]
        if len(core) >= 6:
            out.add(core)
            out.add(core.replace("+", "-").replace("/", "_"))
    return out


def encodings(secret: str) -> set[str]:
    """``secret`` and the forms a body may quote it in."""
    return _quoted_forms(secret) | _base64_forms(secret)


def _base64_forms(secret: str) -> set[str]:
    raw = secret.encode("utf-8", "surrogatepass")
    return _base64_cores(raw) if len(raw) >= _MIN_BASE64 else set()


def _quoted_forms(secret: str) -> set[str]:
    forms = {secret}
    for ascii_only in (True, False):
        escaped = json.dumps(secret, ensure_ascii=ascii_only)[1:-1]
        forms.add(escaped)
        forms.add(escaped.replace("/", "\\/"))
        forms.add(json.dumps(escaped, ensure_ascii=ascii_only)[1:-1])
    for quoted in (quote(secret, safe=""), quote(secret), quote_plus(secret)):
        forms.add(quoted)
        forms.add(_PERCENT.sub(lambda m: m.group().lower(), quoted))
    return {f for f in forms if f}


def trie_pattern(needles: Iterable[str]) -> str:
    """
    One regular expression matching any of ``needles``, longest first, factored as a trie:
    at each position the engine follows one path of literal runs instead of trying every
    needle (about three times faster than a plain alternation for 80 needles).
    """
    trie: dict[str, Any] = {}
    for needle in needles:
        node = trie
        for ch in needle:
            node = node.setdefault(ch, {})
        node[""] = {}
    return _emit(trie)


def _emit(node: dict[str, Any]) -> str:
    alternatives = []
    for ch in sorted(k for k in node if k):
        child, run = node[ch], [ch]
        while len(child) == 1 and "" not in child:  # a chain: one literal run, no nesting
            ((c, child),) = child.items()
            run.append(c)
        alternatives.append(re.escape("".join(run)) + _emit(child))
    if not alternatives:
        return ""
    body = alternatives[0] if len(alternatives) == 1 else f"(?:{'|'.join(alternatives)})"
    # A needle ends here: the longer ones are tried first (greedy), then this one.
    return f"(?:{body})?" if "" in node else body


@implementer(ILogObserver)
@attrs.define(eq=False)
class Redactor:
    """
    A set of secret values and one compiled pattern matching all of them (and their
    encodings), longest first, so one pass over a text removes every one.

    Thread-safe: registering swaps the compiled pattern in one assignment, and a log event
    may come from any thread. As an :class:`ILogObserver` it redacts each event in place.
    """

    placeholder: str = PLACEHOLDER
    _secrets: set[str] = attrs.field(factory=set, init=False)
    _pattern: re.Pattern[str] | None = attrs.field(default=None, init=False)
    #: The shortest needle: shorter texts cannot hold a secret.
    _min: int = attrs.field(default=0, init=False)
    #: Redacted log format strings (constants of the code, so few), reset on each change.
    _formats: dict[str, str] = attrs.field(factory=dict, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)

    def add(self, *secrets: str) -> None:
        """Register secret values (empty ones are ignored; registering twice is cheap)."""
        new = {s for s in secrets if s and s not in self._secrets}
        if new:
            with self._lock:
                self._secrets |= new
                self._compile()

    def discard(self, *secrets: str) -> None:
        """Forget secret values (an OAuth token that was replaced)."""
        with self._lock:
            if self._secrets & set(secrets):
                self._secrets -= set(secrets)
                self._compile()

    def _compile(self) -> None:
        long: set[str] = set()
        short: set[str] = set()
        for s in self._secrets:
            # A base64 core sits inside a longer base64 text by nature: always a substring.
            long |= _base64_forms(s)
            (long if len(s) >= MIN_SUBSTRING else short).update(_quoted_forms(s))
        short -= long
        self._formats = {}
        self._min = min(map(len, long | short), default=0)
        parts = []
        if long:
            parts.append(trie_pattern(long))
        if short:
            parts.append(f"{_ALONE}(?:{trie_pattern(short)})(?![{_WORD}])")
        self._pattern = re.compile("|".join(parts)) if parts else None

    def __len__(self) -> int:
        return len(self._secrets)

    def found_in(self, text: str) -> bool:
        """Whether ``text`` contains a registered secret (in any of its forms)."""
        pattern = self._pattern
        return pattern is not None and len(text) >= self._min and (
            pattern.search(text) is not None)

    def redact(self, text: str) -> str:
        """``text`` with every registered secret replaced by the placeholder."""
        pattern = self._pattern
        if pattern is None or len(text) < self._min:
            return text
        return pattern.sub(self.placeholder, text)

    def redact_bytes(self, data: bytes) -> bytes:
        """The same for UTF-8 bytes (other bytes pass through unchanged)."""
        if self._pattern is None:
            return data
        return self.redact(data.decode("utf-8", "surrogateescape")).encode(
            "utf-8", "surrogateescape")

    def redact_error(self, error: RelayError) -> RelayError:
        """``error`` with its message and header values redacted."""
        if self._pattern is None:
            return error
        message = self.redact(error.message)
        headers = tuple((name, self.redact(value)) for name, value in error.headers)
        if message == error.message and headers == error.headers:
            return error
        return attrs.evolve(error, message=message, headers=headers)

    def scrub(self, value: Any) -> Any:
        """
        A log value with secrets removed: strings and bytes redacted, containers scrubbed
        member by member (credential headers masked whatever their value), a failure's
        message, and any other object whose ``str`` or ``repr`` shows a secret replaced by
        a stand-in that prints redacted.
        """
        if isinstance(value, str):
            return self.redact(value)
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, bytes):
            return self.redact_bytes(value)
        if isinstance(value, Headers):
            value = {k: b", ".join(v) for k, v in value.getAllRawHeaders()}
        if isinstance(value, Mapping):
            return {k: PLACEHOLDER if _sensitive(k) else self.scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            if isinstance(value, tuple) and len(value) == 2 and _sensitive(value[0]):
                return (value[0], PLACEHOLDER)  # a (name, value) header pair
            items = [self.scrub(v) for v in value]
            return items if isinstance(value, list) else type(value)(items)
        if isinstance(value, Failure):
            return self._scrub_failure(value)
        if self._pattern is None:
            return value
        text, shown = str(value), repr(value)
        if self.found_in(text) or self.found_in(shown):
            return _Scrubbed(self, value, self.redact(text), self.redact(shown))
        return value

    def _scrub_failure(self, failure: Failure) -> Failure:
        if self._pattern is None:
            return failure
        message = str(failure.value)
        if not (self.found_in(message) or self.found_in(repr(failure.value))):
            return failure
        scrubbed = copy.copy(failure)
        # The traceback prints the original type's name and this message.
        scrubbed.value = RedactedException(self.redact(message))
        return scrubbed

    def redact_event(self, event: LogEvent) -> None:
        """Remove secrets from a log event, in place (every field a formatter may show)."""
        texts: list[str] = []
        for key, value in list(event.items()):
            if key.startswith("log_") and key not in _LOG_TEXT_FIELDS:
                continue
            if type(value) is str:
                if key == "log_format":
                    event[key] = self._format(value)
                else:
                    texts.append(key)
            elif value is not None and type(value) not in (int, float, bool):
                scrubbed = self.scrub(value)
                if scrubbed is not value:
                    event[key] = scrubbed
        # Plain strings, the usual fields, are searched in one pass (no secret holds a NUL).
        if texts and self.found_in("\0".join(event[k] for k in texts)):
            for key in texts:
                event[key] = self.redact(event[key])

    def _format(self, text: str) -> str:
        formats = self._formats
        cached = formats.get(text)
        if cached is None:
            if len(formats) >= 1024:
                formats.clear()
            cached = formats[text] = self.redact(text)
        return cached

    def __call__(self, event: LogEvent) -> None:
        self.redact_event(event)


#: The ``log_*`` fields that hold text a formatter shows; other ``log_*`` fields are the
#: logging system's own (level, namespace, source object, time).
_LOG_TEXT_FIELDS = frozenset({"log_format", "log_failure", "log_text", "log_io"})


def _sensitive(name: object) -> bool:
    if isinstance(name, bytes):
        name = name.decode("latin-1")
    return isinstance(name, str) and name.lower() in SENSITIVE_HEADERS


class RedactedException(Exception):
    """Stands in for a logged exception whose message showed a secret."""


class _Scrubbed:
    """A logged object whose ``str``/``repr`` showed a secret; prints redacted."""

    __slots__ = ("_redactor", "_repr", "_text", "_wrapped")

    def __init__(self, redactor: Redactor, wrapped: object, text: str, shown: str) -> None:
        self._redactor = redactor
        self._wrapped = wrapped
        self._text = text
        self._repr = shown

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return self._repr

    def __format__(self, spec: str) -> str:
        return format(self._text, spec)

    def __getattr__(self, name: str) -> Any:
        # ``{obj.attr}`` in a log format string reads through, redacted.
        return self._redactor.scrub(getattr(self._wrapped, name))


def _default() -> Redactor:
    return default_redactor


@implementer(ILogObserver)
@attrs.frozen
class RedactingObserver:
    """Passes each event, redacted (a copy), to ``observer``."""

    observer: ILogObserver
    redactor: Redactor = attrs.field(factory=_default)

    def __call__(self, event: LogEvent) -> None:
        copied = dict(event)
        self.redactor.redact_event(copied)
        self.observer(copied)


#: The process's secrets: configuration loading and backends register here; the server's
#: error writers and the log observers redact with it.
default_redactor = Redactor()
_installed: set[int] = set()


def register_secret(*values: str) -> None:
    """Register secret values with the process's redactor (for backends, at run time)."""
    default_redactor.add(*values)


def redact_error(error: RelayError) -> RelayError:
    """``error`` redacted by the process's redactor: call on every error a client gets."""
    return default_redactor.redact_error(error)


def redact_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Response headers (from a backend, maybe copied from an upstream) with values redacted."""
    redact = default_redactor.redact
    return [(name, redact(value)) for name, value in headers]


def install_log_redaction(publisher: Any = None, redactor: Redactor | None = None) -> None:
    """
    Redact every event of ``publisher`` (the global log publisher) before the observers
    added after it see it: the redactor is added as an observer that rewrites each event in
    place, and a publisher hands the same event to its observers in order. Events buffered
    before logging began (twistd's start-up) are the same objects, so they are redacted too.
    Idempotent.
    """
    publisher = globalLogPublisher if publisher is None else publisher
    redactor = default_redactor if redactor is None else redactor
    if id(publisher) in _installed:
        return
    publisher.addObserver(redactor)
    _installed.add(id(publisher))


def register_all(values: Iterable[str]) -> None:
    """Register many values at once (one recompilation)."""
    default_redactor.add(*values)
