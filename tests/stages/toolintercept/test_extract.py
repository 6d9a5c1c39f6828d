"""Readable text from fetched HTML, PDF and text documents."""

from __future__ import annotations

import pytest

from tests.fakeweb import minimal_pdf
from txrelay.stages.toolintercept.extract import Extracted, UnsupportedContent, extract


def test_html_keeps_the_main_text_and_the_title() -> None:
    page = (b"<html><head><title> Notes </title><style>p{color:red}</style>"
            b"<script>alert('x')</script></head><body><nav>Home | About</nav>"
            b"<main><h1>Relays</h1><p>They   stream.</p><p>With\n\n\n backpressure.</p></main>"
            b"<footer>(c) me</footer></body></html>")
    assert extract(page, "text/html") == Extracted(
        "Relays\nThey stream.\nWith\n\nbackpressure.", "Notes")


def test_html_charset_is_honoured() -> None:
    page = "<p>Grüße</p>".encode("latin-1")
    assert extract(page, "text/html; charset=ISO-8859-1").text == "Grüße"


def test_pdf_text_and_title() -> None:
    assert extract(minimal_pdf("Hello PDF world"), "application/pdf") == Extracted(
        "Hello PDF world", "A PDF title")


def test_plain_text_and_sniffing() -> None:
    assert extract(b"  just text \n", "text/plain; charset=utf-8").text == "just text"
    assert extract(minimal_pdf("sniffed"), "").text == "sniffed"
    assert extract(b"<p>sniffed html</p>", "").text == "sniffed html"
    assert extract(b"x", "text/plain; charset=no-such-codec").text == "x"


@pytest.mark.parametrize(("body", "content_type"), [
    (b"\x89PNG\r\n", "image/png"), (b"PK\x03\x04", "application/zip"),
    (b"%PDF-1.4 broken", "application/pdf")])
def test_unsupported_or_broken_content(body: bytes, content_type: str) -> None:
    with pytest.raises(UnsupportedContent):
        extract(body, content_type)
