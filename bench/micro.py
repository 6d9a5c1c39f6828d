"""
In-process micro-benchmarks of the relay's hot paths, no sockets: how many microseconds each
piece of a request costs, so a change can be judged before a full ``bench/run``.

``.venv/bin/python bench/micro.py`` prints one line per measurement; the fixtures are
generated into bench/.work/fixtures first if missing. Each line is the best of 5 repeats.
"""

from __future__ import annotations

import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

import fixtures  # noqa: E402


def best_us(fn: Callable[[], Any], number: int) -> float:
    """Best-of-5 time of one call to ``fn``, in microseconds."""
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def main() -> int:
    """Run every micro-benchmark that the current tree supports."""
    work = BENCH / ".work" / "fixtures"
    if not (work / "bodies" / "cc-json.anthropic.json").exists():
        fixtures.write_all(work)
    stream = (work / "upstream" / "stream" / "v1" / "chat" / "completions").read_bytes()
    small = (work / "bodies" / "small-json.anthropic.json").read_bytes()
    cc = (work / "bodies" / "cc-json.anthropic.json").read_bytes()
    rows: list[tuple[str, float]] = []

    from txrelay.protocol.anthropic import parse_request
    from txrelay.protocol.sse import SSEParser, encode_events

    rows.append(("parse_request(small body)", best_us(lambda: parse_request(small), 2000)))
    rows.append(("parse_request(83 KB Claude-Code body)", best_us(lambda: parse_request(cc), 200)))
    try:
        import orjson

        from txrelay.protocol.validate import validate_request
    except ImportError:
        pass
    else:
        decoded = orjson.loads(cc)
        rows.append(("  of which validate_request (decoded 83 KB body)",
                     best_us(lambda: validate_request(decoded), 200)))
    rows.append(("SSEParser().feed(200-chunk stream, one read)",
                 best_us(lambda: SSEParser().feed(stream), 200)))

    try:
        from txrelay.protocol.openai.dialect import PRESETS
        from txrelay.protocol.openai.request import ToolNameMap, build_chat_request
        from txrelay.protocol.openai.stream import ChatStreamTranslator
    except ImportError:
        PRESETS = None
    if PRESETS is not None:
        dialect = PRESETS["openai"]

        def translate() -> list[Any]:
            t = ChatStreamTranslator(model="m", input_tokens=10, dialect=dialect)
            return t.start() + t.feed(stream) + t.finish()

        events = translate()
        rows.append(("ChatStreamTranslator: start+feed+finish (200 chunks)",
                     best_us(translate, 200)))
        # One paced chunk (one upstream read) into a translator with its text block open.
        paced = stream.split(b"\n\n")[2] + b"\n\n"
        warm = ChatStreamTranslator(model="m", input_tokens=10, dialect=dialect)
        warm.start()
        warm.feed(stream.split(b"\n\n")[1] + b"\n\n")
        one = warm.feed(paced)
        rows.append(("per paced chunk: SSEParser.feed(one data: event)",
                     best_us(lambda: SSEParser().feed(paced), 20000)))
        rows.append(("per paced chunk: ChatStreamTranslator.feed (parse+translate)",
                     best_us(lambda: warm.feed(paced), 20000)))
        rows.append(("per paced chunk: encode_events(its text_delta)",
                     best_us(lambda: encode_events(one), 20000)))
        rows.append((f"encode_events({len(events)} events)",
                     best_us(lambda: encode_events(events), 200)))
        req_small, req_cc = parse_request(small), parse_request(cc)

        def build(req: Any) -> Callable[[], Any]:
            return lambda: build_chat_request(
                req, upstream_model="m", dialect=dialect, max_output_tokens=None,
                stream=req.stream, tool_names=ToolNameMap.from_request(req),
                context_window=None, prompt_tokens=0)

        rows.append(("build_chat_request(small)", best_us(build(req_small), 2000)))
        rows.append(("build_chat_request(83 KB Claude-Code)", best_us(build(req_cc), 200)))

    import attrs

    from txrelay.streams import CollectingSink

    def define_class() -> Any:
        @attrs.define(eq=False)
        class Folding(CollectingSink):
            def write_events(self, events: list[Any]) -> None:
                pass

        return Folding

    rows.append(("defining an attrs subclass (as resource._accumulate does per request)",
                 best_us(define_class, 200)))

    from twisted.web.http import _parseContentType

    rows.append(("twisted.web _parseContentType(b'application/json') (every POST)",
                 best_us(lambda: _parseContentType(b"application/json"), 5000)))

    from hyperlink import URL

    url = "http://127.0.0.1:8080/stream/v1/chat/completions"
    rows.append(("treq's URL handling: URL.from_text(u).to_uri().to_text()",
                 best_us(lambda: URL.from_text(url).to_uri().to_text(), 2000)))

    from twisted.internet import reactor
    from twisted.web.client import Agent

    agent = Agent(reactor)  # type: ignore[arg-type]
    from twisted.web.client import URI

    uri = URI.fromBytes(url.encode())
    rows.append(("Agent._getEndpoint(uri) (HostnameEndpoint per request)",
                 best_us(lambda: agent._getEndpoint(uri), 2000)))

    width = max(len(r[0]) for r in rows)
    for name, us in rows:
        print(f"{name:<{width}}  {us:9.1f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
