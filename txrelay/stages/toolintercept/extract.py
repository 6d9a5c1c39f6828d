# -*- test-case-name: tests.stages.toolintercept.test_extract -*-
"""
Readable text from fetched pages: HTML with BeautifulSoup (stdlib parser), PDF with pypdf.
"""

from __future__ import annotations

import io
import re

import attrs

#: Elements whose text is never readable content.
_DROP = ("script", "style", "noscript", "template", "svg", "canvas", "iframe", "head",
         "nav", "footer", "form", "button")
_BLANKS = re.compile(r"\n\s*\n+")
_SPACES = re.compile(r"[ \t\r\f\v]+")


class UnsupportedContent(Exception):
    """The content type has no text extractor."""


@attrs.frozen
class Extracted:
    """A page's readable text and its title, if it has one."""

    text: str
    title: str | None = None


def _tidy(text: str) -> str:
    lines = (_SPACES.sub(" ", line).strip() for line in text.splitlines())
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip()


def html_text(body: bytes, charset: str | None = None) -> Extracted:
    """The title and visible text of an HTML document (scripts, styles, navigation dropped)."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(body, "html.parser", from_encoding=charset)
    title_tag = soup.find("title")
    title = title_tag.get_text(" ", strip=True) if title_tag is not None else None
    for tag in soup(list(_DROP)):
        tag.decompose()
    root = soup.find("main") or soup.find("article") or soup.body or soup
    return Extracted(_tidy(root.get_text("\n")), title or None)


def pdf_text(body: bytes) -> Extracted:
    """The text of a PDF's pages, and its metadata title."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(body))
        pages = [page.extract_text() or "" for page in reader.pages]
        meta = reader.metadata
    except (PdfReadError, ValueError, KeyError, TypeError) as e:
        raise UnsupportedContent(f"unreadable PDF: {e}") from None
    title = meta.title if meta is not None else None
    return Extracted(_tidy("\n\n".join(pages)), str(title) if title else None)


_TEXT_TYPES = ("text/plain", "text/markdown", "text/csv", "application/json",
               "application/xml", "text/xml")


def extract(body: bytes, content_type: str) -> Extracted:
    """
    Readable text of ``body`` by its ``Content-Type``; :class:`UnsupportedContent` for
    types without an extractor (images, archives, …).
    """
    mime, _, params = content_type.partition(";")
    mime = mime.strip().lower()
    charset = None
    for param in params.split(";"):
        key, _, value = param.strip().partition("=")
        if key.lower() == "charset" and value:
            charset = value.strip('"')
    if mime in ("text/html", "application/xhtml+xml") or (not mime and body.lstrip()[:1] == b"<"):
        return html_text(body, charset)
    if mime == "application/pdf" or (not mime and body.startswith(b"%PDF-")):
        return pdf_text(body)
    if mime in _TEXT_TYPES or mime.startswith("text/"):
        try:
            return Extracted(body.decode(charset or "utf-8", "replace").strip())
        except LookupError:  # an unknown charset name
            return Extracted(body.decode("utf-8", "replace").strip())
    raise UnsupportedContent(f"no text extractor for {mime or 'unknown content'}")
