"""
A fake Google Gemini server on loopback, as strict as the real service, scripted per test.

One HTTP/1.1 server answers both front doors and Google's OAuth token endpoint:

- AI Studio: ``POST /v1beta/models/{model}:{streamGenerateContent?alt=sse|generateContent|
  countTokens}`` with ``x-goog-api-key`` (a wrong key is a 400 ``API_KEY_INVALID``, as Gemini
  answers);
- Vertex AI: ``POST /v1/projects/{p}/locations/{l}/publishers/google/models/{model}:…`` with
  ``Authorization: Bearer`` and a token this server issued and that has not expired (else
  401 ``UNAUTHENTICATED``), and express mode ``/v1/publishers/google/models/{model}:…`` with a
  key;
- ``POST /token``: the JWT-bearer grant google-auth's service-account credentials make; the
  assertion's RS256 signature is checked against the key pair of :func:`service_account_file`.

Each request body is checked the way Gemini checks it before the script is consulted: unknown
fields anywhere (``Invalid JSON payload received. Unknown name …``), schema keywords outside
what function declarations accept, ``type`` lists, ``required`` naming undefined properties,
arrays without ``items``, empty text parts and empty ``parts``, contents without a role
(Vertex), one functionResponse per functionCall of the turn before (count and names),
thought signatures on the first functionCall of every model step of the current turn for
Gemini 3 models (and only signatures this server issued, or Google's placeholder), both
``thinkingLevel`` and ``thinkingBudget``, more than five stop sequences. A rejected request
gets Gemini's 400 and does not consume a scripted answer.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

PLACEHOLDER = "skip_thought_signature_validator"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"

_AI_STUDIO = re.compile(r"^/v1beta/(?P<model>(?:models|tunedModels)/[^/:]+):(?P<method>\w+)$")
_VERTEX = re.compile(r"^/v1/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/"
                     r"publishers/google/models/(?P<model>[^/:]+):(?P<method>\w+)$")
_EXPRESS = re.compile(r"^/v1/publishers/google/models/(?P<model>[^/:]+):(?P<method>\w+)$")
_FUNCTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$")

_REQUEST_FIELDS = {"contents", "systemInstruction", "tools", "toolConfig", "generationConfig",
                   "safetySettings", "cachedContent"}
_VERTEX_ONLY_FIELDS = {"labels"}
_CONTENT_FIELDS = {"role", "parts"}
_DATA_FIELDS = {"text", "inlineData", "fileData", "functionCall", "functionResponse",
                "executableCode", "codeExecutionResult"}
_PART_META = {"thought", "thoughtSignature", "videoMetadata", "partMetadata", "mediaResolution"}
_SCHEMA_FIELDS = {"type", "format", "title", "description", "nullable", "enum", "items",
                  "minItems", "maxItems", "properties", "required", "minProperties",
                  "maxProperties", "minLength", "maxLength", "pattern", "minimum", "maximum",
                  "example", "default", "anyOf", "propertyOrdering"}
_TYPES = {"string", "number", "integer", "boolean", "array", "object", "null"}
_STRING_FORMATS = {"enum", "date-time"}
_DECLARATION_FIELDS = {"name", "description", "parameters", "parametersJsonSchema",
                       "response", "responseJsonSchema", "behavior"}
_TOOL_FIELDS = {"functionDeclarations", "googleSearch", "googleSearchRetrieval",
                "codeExecution", "urlContext", "retrieval"}
_GENERATION_FIELDS = {"maxOutputTokens", "stopSequences", "temperature", "topP", "topK",
                      "candidateCount", "seed", "presencePenalty", "frequencyPenalty",
                      "responseMimeType", "responseSchema", "responseJsonSchema",
                      "responseModalities", "thinkingConfig", "responseLogprobs", "logprobs",
                      "mediaResolution"}
_THINKING_FIELDS = {"includeThoughts", "thinkingBudget", "thinkingLevel"}
_LEVELS = {"MINIMAL", "LOW", "MEDIUM", "HIGH"}
_MODES = {"AUTO", "ANY", "NONE", "VALIDATED"}


# --- scripted answers ------------------------------------------------------------------------


def chunk(*parts: dict[str, Any], finish: str | None = None,
          usage: dict[str, Any] | None = None, model: str = "gemini-fake") -> dict[str, Any]:
    """One ``GenerateContentResponse`` (a stream chunk, or a whole answer)."""
    candidate: dict[str, Any] = {"index": 0}
    if parts:
        candidate["content"] = {"role": "model", "parts": list(parts)}
    if finish is not None:
        candidate["finishReason"] = finish
    out: dict[str, Any] = {"candidates": [candidate], "modelVersion": model,
                           "responseId": "resp-fake"}
    if usage is not None:
        out["usageMetadata"] = usage
    return out


def usage(prompt: int = 20, output: int = 5, thoughts: int = 0,
          cached: int = 0) -> dict[str, Any]:
    """``usageMetadata`` (zero counts omitted, as Gemini does)."""
    out: dict[str, Any] = {"promptTokenCount": prompt, "candidatesTokenCount": output,
                           "totalTokenCount": prompt + output + thoughts}
    if thoughts:
        out["thoughtsTokenCount"] = thoughts
    if cached:
        out["cachedContentTokenCount"] = cached
    return out


def text_chunks(text: str, pieces: int = 3, *, signature: str | None = None,
                prompt: int = 20) -> list[dict[str, Any]]:
    """A streamed text answer; the last chunk has ``finishReason`` and the final usage."""
    step = max(1, -(-len(text) // pieces))
    bits = [text[i:i + step] for i in range(0, len(text), step)] or [""]
    out = [chunk({"text": b}, usage={"promptTokenCount": prompt, "totalTokenCount": prompt})
           for b in bits[:-1]]
    last: dict[str, Any] = {"text": bits[-1]}
    if signature:
        last["thoughtSignature"] = signature
    out.append(chunk(last, finish="STOP", usage=usage(prompt, 7)))
    return out


def call_part(name: str, args: dict[str, Any], *, signature: str | None = None,
              call_id: str | None = None) -> dict[str, Any]:
    """A ``functionCall`` part (with its thought signature)."""
    fc: dict[str, Any] = {"name": name, "args": args}
    if call_id is not None:
        fc["id"] = call_id
    part: dict[str, Any] = {"functionCall": fc}
    if signature is not None:
        part["thoughtSignature"] = signature
    return part


def google_error(code: int, status: str, message: str, *, reason: str | None = None,
                 retry_delay: str | None = None) -> dict[str, Any]:
    """Google's error body (``google.rpc.Status``)."""
    details: list[dict[str, Any]] = []
    if reason is not None:
        details.append({"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason,
                        "domain": "googleapis.com",
                        "metadata": {"service": "generativelanguage.googleapis.com"}})
    if retry_delay is not None:
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo",
                        "retryDelay": retry_delay})
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return {"error": error}


Responder = Callable[["GeminiHandler", "Recorded"], None]


def sse(chunks: Iterable[dict[str, Any] | str], *, crlf: bool = False,
        delay: float = 0.0) -> Responder:
    """Stream ``chunks`` as Gemini does (``data: {…}`` events, no ``[DONE]``, then close)."""
    end = "\r\n\r\n" if crlf else "\n\n"
    chunks = list(chunks)

    def respond(h: GeminiHandler, _: Recorded) -> None:
        h.start(200, "text/event-stream")
        for c in chunks:
            data = c if isinstance(c, str) else f"data: {json.dumps(c)}{end}"
            if not h.write_chunk(data.encode()):
                return
            if delay:
                time.sleep(delay)
        h.end_chunks()
    respond.payload = list(chunks)  # type: ignore[attr-defined]
    return respond


def answer(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Responder:
    """One JSON answer (a ``generateContent`` result, a ``countTokens`` result, an error)."""
    def respond(h: GeminiHandler, _: Recorded) -> None:
        h.json(status, body, headers)
    respond.payload = body  # type: ignore[attr-defined]
    return respond


def error(code: int, status: str, message: str, *, reason: str | None = None,
          retry_delay: str | None = None, headers: dict[str, str] | None = None) -> Responder:
    """A Google error answer."""
    return answer(google_error(code, status, message, reason=reason, retry_delay=retry_delay),
                  code, headers)


# --- service accounts ------------------------------------------------------------------------


def service_account_file(path: Path, token_uri: str, *,
                         email: str = "relay@txrelay-test.iam.gserviceaccount.com",
                         project: str = "txrelay-test") -> rsa.RSAPrivateKey:
    """Write a service-account key file (a key generated now) whose token URI is ours."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path.write_text(json.dumps({
        "type": "service_account", "project_id": project, "private_key_id": "k1",
        "private_key": pem, "client_email": email, "client_id": "1",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth", "token_uri": token_uri,
    }))
    return key


def _b64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# --- the server ------------------------------------------------------------------------------


@attrs.define
class Recorded:
    """One request the fake received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any
    #: ``ai-studio``, ``vertex``, ``express`` or ``token``.
    api: str = ""
    model: str = ""
    rpc: str = ""
    #: The 4xx the fake answered instead of the script, if any.
    rejected: str | None = None


class GeminiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        raw = self.rfile.read(length)
        split = urlsplit(self.path)
        fake = self.server.fake
        rec = Recorded("POST", split.path, parse_qs(split.query),
                       {k.lower(): v for k, v in self.headers.items()}, raw)
        with fake.lock:
            fake.requests.append(rec)
        if split.path == "/token":
            rec.api = "token"
            fake.token_endpoint(self, rec, raw)
            return
        try:
            rec.body = json.loads(raw)
        except ValueError:
            self.reject(rec, 400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
            return
        fake.serve(self, rec)

    def start(self, status: int, content_type: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()

    def write_chunk(self, data: bytes) -> bool:
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        except OSError:
            self.close_connection = True
            return False
        return True

    def end_chunks(self) -> None:
        try:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json; charset=UTF-8")
        self.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def reject(self, rec: Recorded, code: int, status: str, message: str,
               reason: str | None = None) -> None:
        rec.rejected = message
        self.json(code, google_error(code, status, message, reason=reason))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeGemini


class Invalid(Exception):
    """What Gemini would answer 400 for."""


@attrs.define(eq=False)
class FakeGemini:
    """The fake; ``push`` responders in the order requests will arrive."""

    api_key: str = "AIza-fake-gemini-key"
    #: Seconds the token endpoint takes (concurrent refreshes become visible).
    token_delay: float = 0.0
    #: ``expires_in`` of the tokens issued.
    token_lifetime: int = 3600
    requests: list[Recorded] = attrs.Factory(list)
    script: deque[Responder] = attrs.Factory(deque)
    #: Answers valid requests when the script is empty (a scripted model), else a greeting.
    default: Responder | None = None
    #: Public keys of the service accounts whose assertions are accepted, by e-mail.
    accounts: dict[str, Any] = attrs.Factory(dict)
    tokens: dict[str, float] = attrs.Factory(dict)
    #: Thought signatures this server has sent (only those, or the placeholder, come back).
    issued_signatures: set[str] = attrs.Factory(set)
    lock: threading.Lock = attrs.Factory(threading.Lock)
    server: _Server | None = None

    def start(self) -> FakeGemini:
        self.server = _Server(("127.0.0.1", 0), GeminiHandler)
        self.server.fake = self
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    @property
    def origin(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def ai_studio_url(self) -> str:
        """The ``base_url`` of the AI Studio front door."""
        return f"{self.origin}/v1beta"

    @property
    def vertex_url(self) -> str:
        """The ``base_url`` of the Vertex AI front door."""
        return f"{self.origin}/v1"

    @property
    def token_uri(self) -> str:
        return f"{self.origin}/token"

    def add_service_account(self, path: Path, **kwargs: Any) -> Path:
        """Write a service-account file whose tokens this server issues."""
        key = service_account_file(path, self.token_uri, **kwargs)
        email = json.loads(path.read_text())["client_email"]
        self.accounts[email] = key.public_key()
        return path

    def push(self, *responders: Responder) -> None:
        for r in responders:
            self.script.append(r)
            # Signatures in scripted chunks count as issued once the script is written.
            self._note_signatures(r)

    def _note_signatures(self, responder: Responder) -> None:
        self._collect(getattr(responder, "payload", None))

    def _collect(self, value: Any) -> None:
        if isinstance(value, dict):
            sig = value.get("thoughtSignature")
            if isinstance(sig, str):
                self.issued_signatures.add(sig)
            for v in value.values():
                self._collect(v)
        elif isinstance(value, list | tuple):
            for v in value:
                self._collect(v)

    @property
    def token_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.api == "token"]

    @property
    def model_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.api in ("ai-studio", "vertex", "express")]

    # the OAuth token endpoint ----------------------------------------------------------------

    def token_endpoint(self, h: GeminiHandler, rec: Recorded, raw: bytes) -> None:
        if self.token_delay:
            time.sleep(self.token_delay)
        form = parse_qs(raw.decode("ascii", "replace"))
        grant = form.get("grant_type", [""])[0]
        assertion = form.get("assertion", [""])[0]
        if grant != "urn:ietf:params:oauth:grant-type:jwt-bearer" or assertion.count(".") != 2:
            rec.rejected = "unsupported_grant_type"
            h.json(400, {"error": "unsupported_grant_type",
                         "error_description": "Invalid grant_type."})
            return
        head, claims_b64, signature = assertion.split(".")
        try:
            claims = json.loads(_b64(claims_b64))
            header = json.loads(_b64(head))
        except ValueError:
            claims, header = {}, {}
        key = self.accounts.get(claims.get("iss"))
        problem = None
        if header.get("alg") != "RS256" or key is None:
            problem = "Invalid JWT: unknown issuer or algorithm."
        else:
            try:
                key.verify(_b64(signature), f"{head}.{claims_b64}".encode(),
                           padding.PKCS1v15(), hashes.SHA256())
            except Exception:
                problem = "Invalid JWT Signature."
        now = time.time()
        # google-auth addresses the assertion to Google's token endpoint whatever token_uri
        # says, and Google checks for exactly that audience.
        if problem is None and (claims.get("aud") not in (GOOGLE_TOKEN_AUDIENCE, self.token_uri)
                                or CLOUD_PLATFORM not in str(claims.get("scope", "")).split()
                                or not claims.get("iat", 0) - 300 <= now <= claims.get("exp", 0)):
            problem = "Invalid JWT: Token must be a short-lived token and in a reasonable " \
                "timeframe, for the cloud-platform scope, addressed to this token URI."
        if problem is not None:
            rec.rejected = problem
            h.json(400, {"error": "invalid_grant", "error_description": problem})
            return
        with self.lock:
            token = f"ya29.fake-access-token-{len(self.tokens) + 1}-{int(now * 1000)}"
            self.tokens[token] = time.monotonic() + self.token_lifetime
        h.json(200, {"access_token": token, "expires_in": self.token_lifetime,
                     "token_type": "Bearer"})

    def expire_tokens(self) -> None:
        """Every issued token stops being accepted (Vertex then answers 401)."""
        with self.lock:
            self.tokens = dict.fromkeys(self.tokens, 0.0)

    # the model endpoints ---------------------------------------------------------------------

    def serve(self, h: GeminiHandler, rec: Recorded) -> None:
        for api, pattern in (("ai-studio", _AI_STUDIO), ("vertex", _VERTEX),
                             ("express", _EXPRESS)):
            m = pattern.match(rec.path)
            if m:
                rec.api, rec.model, rec.rpc = api, m["model"].rpartition("/")[2], m["method"]
                break
        else:
            h.reject(rec, 404, "NOT_FOUND", f"The requested URL {rec.path} was not found.")
            return
        if rec.rpc not in ("generateContent", "streamGenerateContent", "countTokens"):
            h.reject(rec, 404, "NOT_FOUND", f"Method {rec.rpc} not found.")
            return
        if not self._authenticated(h, rec):
            return
        if rec.rpc == "streamGenerateContent" and rec.query.get("alt") != ["sse"]:
            h.reject(rec, 400, "INVALID_ARGUMENT", "fake: this fake only streams with alt=sse")
            return
        try:
            if rec.rpc == "countTokens":
                self._check_count(rec)
            else:
                check_generate(rec.body, vertex=rec.api != "ai-studio", model=rec.model,
                               issued=self.issued_signatures)
        except Invalid as e:
            h.reject(rec, 400, "INVALID_ARGUMENT", str(e))
            return
        if self.script:
            responder = self.script.popleft()
        elif self.default is not None and rec.rpc != "countTokens":
            responder = self.default
        elif rec.rpc == "countTokens":
            responder = answer({"totalTokens": len(json.dumps(rec.body)) // 4})
        elif rec.rpc == "generateContent":
            responder = answer(chunk({"text": "Hello from fake Gemini."}, finish="STOP",
                                     usage=usage()))
        else:
            responder = sse(text_chunks("Hello from fake Gemini."))
        responder(h, rec)

    def _authenticated(self, h: GeminiHandler, rec: Recorded) -> bool:
        if rec.api in ("ai-studio", "express"):
            key = rec.headers.get("x-goog-api-key") or (rec.query.get("key") or [""])[0]
            if key != self.api_key:
                h.reject(rec, 400, "INVALID_ARGUMENT",
                         "API key not valid. Please pass a valid API key.",
                         reason="API_KEY_INVALID")
                return False
            return True
        auth = rec.headers.get("authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else ""
        with self.lock:
            expiry = self.tokens.get(token)
        if expiry is None or time.monotonic() >= expiry:
            h.reject(rec, 401, "UNAUTHENTICATED",
                     "Request had invalid authentication credentials. Expected OAuth 2 access "
                     "token, login cookie or other valid authentication credential.")
            return False
        return True

    def _check_count(self, rec: Recorded) -> None:
        body = rec.body
        if not isinstance(body, dict):
            raise Invalid("Invalid JSON payload received. Expected an object.")
        if rec.api == "ai-studio":
            _fields(body, {"contents", "generateContentRequest"}, "")
            inner = body.get("generateContentRequest")
            if inner is not None:
                if not isinstance(inner, dict) or not str(inner.get("model", "")).startswith(
                        "models/"):
                    raise Invalid("generateContentRequest.model: must be models/{model}")
                rest = {k: v for k, v in inner.items() if k != "model"}
                check_generate(rest, vertex=False, model=rec.model,
                               issued=self.issued_signatures, where="generateContentRequest.")
                return
            check_generate(body, vertex=False, model=rec.model, issued=self.issued_signatures)
            return
        _fields(body, {"contents", "systemInstruction", "tools", "generationConfig"}, "")
        check_generate(body, vertex=True, model=rec.model, issued=self.issued_signatures)


# --- validation ------------------------------------------------------------------------------


def _fields(obj: dict[str, Any], allowed: set[str], where: str) -> None:
    for key in obj:
        if key not in allowed:
            at = f" at '{where.rstrip('.')}'" if where else ""
            raise Invalid(f'Invalid JSON payload received. Unknown name "{key}"{at}: '
                          "Cannot find field.")


def check_schema(schema: Any, where: str) -> None:
    """The ``parameters`` OpenAPI subset (gemini.md §3.1), as AI Studio enforces it."""
    if not isinstance(schema, dict):
        raise Invalid(f"Invalid JSON payload received. '{where}': expected an object.")
    _fields(schema, _SCHEMA_FIELDS, where)
    kind = schema.get("type")
    if isinstance(kind, list):
        raise Invalid(f"Invalid JSON payload received. '{where}.type': Proto field is not "
                      "repeating, cannot start list.")
    if kind is not None and (not isinstance(kind, str) or kind.lower() not in _TYPES):
        raise Invalid(f"Invalid value at '{where}.type': {json.dumps(kind)}")
    kind = kind.lower() if isinstance(kind, str) else None
    if "enum" in schema and (not isinstance(schema["enum"], list)
                             or not all(isinstance(v, str) for v in schema["enum"])):
        raise Invalid(f"Invalid value at '{where}.enum': enum values must be strings")
    fmt = schema.get("format")
    if fmt is not None and kind == "string" and fmt not in _STRING_FORMATS:
        raise Invalid(f"'{where}.format': only 'enum' and 'date-time' are supported for "
                      "STRING type")
    props = schema.get("properties")
    if props is not None:
        if not isinstance(props, dict):
            raise Invalid(f"'{where}.properties': expected an object.")
        for name, sub in props.items():
            check_schema(sub, f"{where}.properties[{name}]")
    required = schema.get("required")
    if required is not None:
        defined = props if isinstance(props, dict) else {}
        for i, name in enumerate(required):
            if name not in defined:
                raise Invalid(f"GenerateContentRequest.{where}.required[{i}]: property is not "
                              "defined")
    if kind == "array" and "items" not in schema:
        raise Invalid(f"GenerateContentRequest.{where}.items: missing field.")
    if "items" in schema:
        check_schema(schema["items"], f"{where}.items")
    for i, sub in enumerate(schema.get("anyOf") or ()):
        check_schema(sub, f"{where}.anyOf[{i}]")


def _check_part(part: Any, where: str) -> str:
    if not isinstance(part, dict):
        raise Invalid(f"Invalid JSON payload received. '{where}': expected an object.")
    _fields(part, _DATA_FIELDS | _PART_META, where)
    data = [k for k in part if k in _DATA_FIELDS]
    if len(data) != 1:
        raise Invalid(f"{where}: a part must hold exactly one of text, inlineData, fileData, "
                      f"functionCall, functionResponse (found {len(data)})")
    kind = data[0]
    if kind == "text":
        if not isinstance(part["text"], str):
            raise Invalid(f"Invalid value at '{where}.text'")
        if not part["text"] and "thoughtSignature" not in part:
            raise Invalid("Unable to submit request because it has an empty text parameter. "
                          "Add a value to the parameter and try again.")
    elif kind == "inlineData":
        _fields(part["inlineData"], {"mimeType", "data", "displayName"}, f"{where}.inline_data")
        try:
            base64.b64decode(part["inlineData"]["data"], validate=True)
        except (KeyError, ValueError, TypeError):
            raise Invalid(f"Invalid value at '{where}.inline_data.data' (TYPE_BYTES), "
                          "Base64 decoding failed") from None
    elif kind == "fileData":
        _fields(part["fileData"], {"mimeType", "fileUri", "displayName"}, f"{where}.file_data")
    elif kind == "functionCall":
        fc = part["functionCall"]
        _fields(fc, {"name", "args", "id"}, f"{where}.function_call")
        if not isinstance(fc.get("name"), str) or not isinstance(fc.get("args", {}), dict):
            raise Invalid(f"{where}.function_call: name and an object args are required")
    elif kind == "functionResponse":
        fr = part["functionResponse"]
        _fields(fr, {"name", "response", "id", "parts", "willContinue", "scheduling"},
                f"{where}.function_response")
        if not isinstance(fr.get("name"), str) or not fr["name"]:
            raise Invalid(f"{where}.function_response.name: Name cannot be empty.")
        if not isinstance(fr.get("response"), dict):
            raise Invalid(f"Invalid value at '{where}.function_response.response' "
                          "(type.googleapis.com/google.protobuf.Struct)")
    sig = part.get("thoughtSignature")
    if sig is not None and not isinstance(sig, str):
        raise Invalid(f"Invalid value at '{where}.thought_signature' (TYPE_BYTES)")
    return kind


def _is_gemini_3(model: str) -> bool:
    m = re.match(r"^gemini-(\d+)", model)
    return m is not None and int(m.group(1)) >= 3


def check_generate(body: Any, *, vertex: bool, model: str, issued: set[str],
                   where: str = "") -> None:
    """Raise :class:`Invalid` for what Gemini would reject in a generate request."""
    if not isinstance(body, dict):
        raise Invalid("Invalid JSON payload received. Expected an object.")
    _fields(body, _REQUEST_FIELDS | (_VERTEX_ONLY_FIELDS if vertex else set()), where)
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise Invalid("* GenerateContentRequest.contents: contents is not specified")
    kinds: list[list[str]] = []
    for i, content in enumerate(contents):
        at = f"contents[{i}]"
        if not isinstance(content, dict):
            raise Invalid(f"Invalid JSON payload received. '{at}': expected an object.")
        _fields(content, _CONTENT_FIELDS, at)
        role = content.get("role")
        if role is None and vertex:
            raise Invalid("Please use a valid role: user, model.")
        if role not in (None, "user", "model"):
            raise Invalid(f"Please use a valid role: user, model. (got {role!r})")
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            raise Invalid(f"* GenerateContentRequest.{at}.parts: contents.parts must not be "
                          "empty.")
        kinds.append([_check_part(p, f"{at}.parts[{j}]") for j, p in enumerate(parts)])
    system = body.get("systemInstruction")
    if system is not None:
        _fields(system, _CONTENT_FIELDS, "system_instruction")
        for j, p in enumerate(system.get("parts") or ()):
            if _check_part(p, f"system_instruction.parts[{j}]") != "text":
                raise Invalid("system_instruction: only text parts are supported")
    _check_pairing(contents)
    if _is_gemini_3(model):
        _check_signatures(contents, issued)
    else:
        for content in contents:
            for p in content["parts"]:
                sig = p.get("thoughtSignature")
                if sig is not None and sig != PLACEHOLDER and sig not in issued:
                    raise Invalid("Corrupted thought signature.")
    declared = _check_tools(body.get("tools"))
    _check_tool_config(body.get("toolConfig"), declared)
    _check_generation(body.get("generationConfig"))
    for i, s in enumerate(body.get("safetySettings") or ()):
        _fields(s, {"category", "threshold", "method"}, f"safety_settings[{i}]")


def _check_pairing(contents: list[dict[str, Any]]) -> None:
    for i, content in enumerate(contents):
        calls = [p["functionCall"]["name"] for p in content["parts"] if "functionCall" in p]
        responses_here = [p for p in content["parts"] if "functionResponse" in p]
        if content.get("role") == "model" and responses_here:
            raise Invalid("Function response parts must be in a user content.")
        if not calls:
            continue
        if content.get("role") != "model":
            raise Invalid("Function call parts must be in a model content.")
        following = contents[i + 1] if i + 1 < len(contents) else None
        if following is None:
            continue  # the model's last step: the caller is about to run the calls
        responses = [p["functionResponse"]["name"] for p in following["parts"]
                     if "functionResponse" in p]
        if len(responses) != len(calls):
            raise Invalid("Please ensure that the number of function response parts is equal "
                          "to the number of function call parts of the function call turn.")
        if sorted(responses) != sorted(calls):
            raise Invalid("Please ensure that function response turn comes immediately after "
                          "a function call turn, and the function response names match the "
                          "function call names.")
    for i, content in enumerate(contents):
        if any("functionResponse" in p for p in content["parts"]):
            before = contents[i - 1] if i else None
            if before is None or not any("functionCall" in p for p in before["parts"]):
                raise Invalid("Please ensure that function response turn comes immediately "
                              "after a function call turn.")


def _check_signatures(contents: list[dict[str, Any]], issued: set[str]) -> None:
    """Gemini 3: the first functionCall of each model step of the current turn is signed."""
    start = 0
    for i, content in enumerate(contents):
        if content.get("role", "user") == "user" and any(
                "functionResponse" not in p for p in content["parts"]):
            start = i + 1
    for i, content in enumerate(contents):
        for _j, p in enumerate(content["parts"]):
            sig = p.get("thoughtSignature")
            if sig is not None and sig != PLACEHOLDER and sig not in issued:
                raise Invalid("Corrupted thought signature.")
        if i < start or content.get("role") != "model":
            continue
        position = next((j for j, p in enumerate(content["parts"]) if "functionCall" in p),
                        None)
        if position is not None and "thoughtSignature" not in content["parts"][position]:
            name = content["parts"][position]["functionCall"]["name"]
            raise Invalid("Function call is missing a thought_signature in functionCall parts. "
                          "This is required for tools to work correctly, and missing "
                          "thought_signature may lead to degraded model performance. "
                          f"Additional data, function call `default_api:{name}` , position "
                          f"{position + 1}. Please refer to https://ai.google.dev/gemini-api/"
                          "docs/thought-signatures for more details.")


def _check_tools(tools: Any) -> set[str]:
    declared: set[str] = set()
    if tools is None:
        return declared
    for i, tool in enumerate(tools):
        _fields(tool, _TOOL_FIELDS, f"tools[{i}]")
        decls = tool.get("functionDeclarations")
        if decls is None:
            continue
        if not decls:
            raise Invalid(f"* GenerateContentRequest.tools[{i}].function_declarations: must "
                          "not be empty")
        for j, decl in enumerate(decls):
            at = f"tools[{i}].function_declarations[{j}]"
            _fields(decl, _DECLARATION_FIELDS, at)
            name = decl.get("name")
            if not isinstance(name, str) or not _FUNCTION_NAME.match(name):
                raise Invalid(f"* GenerateContentRequest.{at}.name: Invalid function name. "
                              "Must start with a letter or an underscore. Must be a-z, A-Z, "
                              "0-9, or contain underscores, dots, colons and dashes, with a "
                              "maximum length of 64.")
            if "parameters" in decl and "parametersJsonSchema" in decl:
                raise Invalid(f"{at}: parameters and parameters_json_schema are mutually "
                              "exclusive")
            if "parameters" in decl:
                check_schema(decl["parameters"], f"{at}.parameters")
            declared.add(name)
    return declared


def _check_tool_config(config: Any, declared: set[str]) -> None:
    if config is None:
        return
    _fields(config, {"functionCallingConfig", "retrievalConfig"}, "tool_config")
    fcc = config.get("functionCallingConfig") or {}
    _fields(fcc, {"mode", "allowedFunctionNames"}, "tool_config.function_calling_config")
    if fcc.get("mode", "AUTO") not in _MODES:
        raise Invalid(f"Invalid value at 'tool_config.function_calling_config.mode': "
                      f"{json.dumps(fcc.get('mode'))}")
    allowed = fcc.get("allowedFunctionNames")
    if allowed is not None:
        if fcc.get("mode") not in ("ANY", "VALIDATED"):
            raise Invalid("allowed_function_names may only be set with mode ANY")
        for name in allowed:
            if name not in declared:
                raise Invalid(f"allowed_function_names: {name} is not a declared function")
    if not declared:
        raise Invalid("tool_config is set but no function declarations are given")


def _check_generation(config: Any) -> None:
    if config is None:
        return
    _fields(config, _GENERATION_FIELDS, "generation_config")
    stops = config.get("stopSequences")
    if stops is not None and len(stops) > 5:
        raise Invalid("generation_config.stop_sequences: at most 5 stop sequences")
    thinking = config.get("thinkingConfig")
    if thinking is not None:
        _fields(thinking, _THINKING_FIELDS, "generation_config.thinking_config")
        if "thinkingLevel" in thinking and "thinkingBudget" in thinking:
            raise Invalid("You can only set only one of thinking budget and thinking level.")
        level = thinking.get("thinkingLevel")
        if level is not None and level not in _LEVELS:
            raise Invalid(f"Invalid value at 'generation_config.thinking_config.thinking_level'"
                          f": {json.dumps(level)}")
    limit = config.get("maxOutputTokens")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise Invalid("generation_config.max_output_tokens: must be a positive integer")
