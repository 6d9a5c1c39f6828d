"""
Gemini thought signatures and tool-use ids, carried statelessly through the client.

Gemini 3 rejects a ``functionCall`` history part without the ``thoughtSignature`` it came
with (gemini.md §6, R-G10). Anthropic clients echo back thinking blocks (with their
``signature``) and tool-use ids verbatim, so both carry what the relay needs (mapping §10.1):

- ``txr1.gem.th.<check>.<sig>``: the signature of a thought part; the thinking block *is* that
  part on the way back.
- ``txr1.gem.fc.<tool_use_id>.<check>.<sig>``: a carrier thinking block (empty text) right
  before a ``tool_use``; ``<sig>`` goes back on that call's ``functionCall`` part.
- ``txr1.gem.none.<rand>``: thought text that came without a signature.
- tool-use ids ``toolu_gm_<gemini id>`` (Gemini gave a safe id, sent back as ``id``) and
  ``toolu_gx_<hash>`` (it gave none; derived from the response so relay instances agree), R-X13.

``<check>`` is a short hash over the kind, the *scope* (the upstream model by default), the
tool-use id and the signature. A carrier that was edited, truncated, or issued for another
model fails the check and is ignored (the placeholder rule then applies), so a tampered
signature never reaches Gemini as an "Invalid thought signature" 400 and never raises here.
It is an integrity check, not a secret MAC: forging one only hurts the forger, since Gemini
verifies the signature itself.
"""

from __future__ import annotations

import re

from txrelay.protocol.gemini.names import hash62
from txrelay.protocol.ids import base62

PREFIX = "txr1.gem."
#: Google's documented value that skips signature validation for history the model did not
#: produce (gemini.md §6).
PLACEHOLDER = "skip_thought_signature_validator"

_GM = "toolu_gm_"
_GX = "toolu_gx_"
_SIG = re.compile(r"^[A-Za-z0-9+/=_-]{1,65536}$")
_TOOL_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_GEMINI_ID = re.compile(r"^[A-Za-z0-9_-]{1,55}$")
_CHECK_LEN = 8


def _check(kind: str, scope: str, tool_id: str, sig: str) -> str:
    return hash62(f"{kind}|{scope}|{tool_id}|{sig}", _CHECK_LEN)


def encode_thought(sig: str, scope: str) -> str:
    """The thinking-block signature for a thought part signed ``sig``."""
    return f"{PREFIX}th.{_check('th', scope, '', sig)}.{sig}"


def encode_call(tool_use_id: str, sig: str, scope: str) -> str:
    """The carrier signature putting ``sig`` back on the call ``tool_use_id``."""
    return f"{PREFIX}fc.{tool_use_id}.{_check('fc', scope, tool_use_id, sig)}.{sig}"


def unsigned_thought() -> str:
    """The signature of a thinking block whose thought part had no signature."""
    return f"{PREFIX}none.{base62(24)}"


def decode_thought(value: object, scope: str) -> str | None:
    """The Gemini signature inside a ``th`` signature, or ``None`` (wrong, foreign, edited)."""
    if not isinstance(value, str) or not value.startswith(PREFIX + "th."):
        return None
    check, dot, sig = value[len(PREFIX) + 3 :].partition(".")
    if not dot or not _SIG.match(sig) or check != _check("th", scope, "", sig):
        return None
    return sig


def decode_call(value: object, scope: str) -> tuple[str, str] | None:
    """``(tool_use_id, signature)`` from a carrier signature, or ``None``."""
    if not isinstance(value, str) or not value.startswith(PREFIX + "fc."):
        return None
    parts = value[len(PREFIX) + 3 :].split(".", 2)
    if len(parts) != 3:
        return None
    tool_id, check, sig = parts
    if not _TOOL_ID.match(tool_id) or not _SIG.match(sig):
        return None
    if check != _check("fc", scope, tool_id, sig):
        return None
    return tool_id, sig


def is_gemini_signature(value: object) -> bool:
    """Whether ``value`` is a relay signature for Gemini (any kind)."""
    return isinstance(value, str) and value.startswith(PREFIX)


def tool_use_id_for(gemini_id: object, seed: str) -> str:
    """
    The Anthropic id of a function call (R-X13): ``toolu_gm_<id>`` when Gemini's id is safe,
    else ``toolu_gx_`` + a hash of ``seed`` (response id, position, call), stable across
    relay instances.
    """
    if isinstance(gemini_id, str) and _GEMINI_ID.match(gemini_id):
        return _GM + gemini_id
    return _GX + hash62(seed, 24)


def gemini_call_id(tool_use_id: object) -> str | None:
    """The ``id`` to send on ``functionCall``/``functionResponse`` for a tool-use id, if any."""
    if isinstance(tool_use_id, str) and tool_use_id.startswith(_GM):
        rest = tool_use_id[len(_GM) :]
        if _GEMINI_ID.match(rest):
            return rest
    return None
