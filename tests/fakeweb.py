"""
Fake web servers on loopback for the tool-intercept tests: a SearXNG JSON API and a small
web site (HTML, PDF, redirects), each recording what it was asked.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs

#: path → (status, headers, body); a callable gets the server to build URLs.
Page = tuple[int, dict[str, str], bytes]


@attrs.define
class Hit:
    """One request a fake web server received."""

    path: str
    host: str | None
    query: dict[str, list[str]]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        self.server.site.hits.append(Hit(parts.path, self.headers.get("host"),
                                         parse_qs(parts.query)))
        page = self.server.site.pages.get(parts.path)
        status, headers, body = page(self.server.site) if callable(page) else page or (
            404, {"content-type": "text/plain"}, b"not found")
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    site: FakeSite


@attrs.define(eq=False)
class FakeSite:
    """A web server on ``host`` serving ``pages`` (path → page or function of the site)."""

    host: str = "127.0.0.1"
    pages: dict[str, Page | Callable[[FakeSite], Page]] = attrs.Factory(dict)
    hits: list[Hit] = attrs.Factory(list)
    server: _Server | None = None

    def start(self) -> FakeSite:
        self.server = _Server((self.host, 0), _Handler)
        self.server.site = self
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def html(body: str, status: int = 200) -> Page:
    return status, {"content-type": "text/html; charset=utf-8"}, body.encode()


def redirect(location: str, status: int = 302) -> Page:
    return status, {"location": location}, b""


def searxng(results: list[dict[str, Any]]) -> Callable[[FakeSite], Page]:
    """A SearXNG ``/search?format=json`` answer."""
    def page(_: FakeSite) -> Page:
        body = {"query": "q", "number_of_results": len(results), "results": results}
        return 200, {"content-type": "application/json"}, json.dumps(body).encode()
    return page


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF showing ``text`` in Helvetica (offsets computed, so pypdf reads it)."""
    stream = f"BT /F1 18 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream
        + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Title (A PDF title) >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for n, obj in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{n} 0 obj\n".encode() + obj + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += (f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R /Info 6 0 R >>\n"
            f"startxref\n{xref}\n%%EOF\n").encode()
    return bytes(out)
