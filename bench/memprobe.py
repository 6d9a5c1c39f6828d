"""
What each held-open stream keeps in the relay's memory, by allocation site.

``python bench/memprobe.py [--n 1000] [--cases small,cc] [--frames 10]`` starts
bench/pyupstream.py (its ``/hold`` streams: a role chunk and one text chunk, then silence) and
a relay that runs with ``tracemalloc`` on (``--serve``, an internal mode: the snapshots are
taken here, never in txrelay itself; SIGUSR1 writes one). For each case it holds a few
streams open and closes them (a warm-up, so that caches and pools are grown), takes a
snapshot, holds N streams with bench/holdclient.py, takes another, and prints the difference
per stream: traced Python bytes, the allocation sites that hold the most, and the object
types whose count grew (from ``gc.get_objects()``), with the relay's RSS per stream.
"""

from __future__ import annotations

import argparse
import collections
import gc
import inspect
import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

CLIENT_KEY = "bench-client-key"
UPSTREAM_KEY = "bench-upstream-key"


# ── the traced relay (--serve) ─────────────────────────────────────────────────────────────

def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def serve(out: str, frames: int, argv: list[str]) -> int:
    """Run ``txrelay`` with ``argv`` under tracemalloc; SIGUSR1 writes a snapshot to ``out``."""
    if frames:
        tracemalloc.start(frames)
    count = [0]

    def dump(_sig: int, _frame: Any) -> None:
        gc.collect()
        snap = tracemalloc.take_snapshot() if frames else None
        types = collections.Counter(f"{type(o).__qualname__} @{type(o).__module__}"
                                    for o in gc.get_objects())
        k = count[0]
        count[0] += 1
        with open(Path(out) / f"snap-{k}.pickle", "wb") as f:
            pickle.dump({"snapshot": snap, "types": dict(types), "rss_kib": _rss_kib(),
                         "traced": tracemalloc.get_traced_memory()[0] if frames else 0}, f)
        (Path(out) / f"snap-{k}.done").write_text("")
    def holders(_sig: int, _frame: Any) -> None:
        (Path(out) / "holders.txt").write_text(_holders())
    signal.signal(signal.SIGUSR1, dump)
    signal.signal(signal.SIGUSR2, holders)
    from txrelay.cli import main
    return main(argv)


#: The per-stream objects whose holders ``--holders`` lists.
HOLDERS_OF = ("Exchange", "MessagesRequest", "UpstreamRequest", "Headers", "Deferred",
              "DelayedCall", "BytesIO")


def _describe(o: Any) -> str:
    if isinstance(o, dict):
        return f"dict({', '.join(map(str, list(o)[:6]))})"
    if isinstance(o, (list, tuple)):
        return f"{type(o).__name__}[{len(o)}]"
    if inspect.isframe(o):
        return f"frame {o.f_code.co_name} ({Path(o.f_code.co_filename).name}:{o.f_lineno})"
    if inspect.iscoroutine(o):
        return f"coroutine {o.__qualname__}"
    if inspect.isfunction(o):
        return f"function {o.__qualname__}"
    if inspect.ismethod(o):
        return f"method {o.__qualname__}"
    return type(o).__qualname__


def _walk(obj: Any, depth: int, indent: str, skip: set[int], lines: list[str]) -> None:
    """``obj``'s referrers, ``depth`` levels up (what ``skip`` names left out)."""
    for r in gc.get_referrers(obj):
        if id(r) in skip or type(r).__name__ == "list_iterator":
            continue
        lines.append(f"{indent}<- {_describe(r)}")
        if depth > 1 and not inspect.ismodule(r):
            _walk(r, depth - 1, indent + "   ", skip, lines)


def _holders() -> str:
    """For one live object of each type in ``HOLDERS_OF``: its referrers, three levels up."""
    gc.collect()
    live = gc.get_objects()
    by_type: dict[str, list[Any]] = collections.defaultdict(list)
    for o in live:
        if type(o).__qualname__ in HOLDERS_OF:
            by_type[type(o).__qualname__].append(o)
    lines: list[str] = []
    skip = {id(live), id(by_type), id(lines), *map(id, by_type.values())}
    for name, objs in by_type.items():
        lines.append(f"== {name} ({len(objs)} live)")
        total = collections.Counter(_describe(r) for r in gc.get_referrers(*objs)
                                    if id(r) not in skip)
        lines += [f"   all are held by: {n} x {what}" for what, n in total.most_common(12)]
        _walk(objs[-1], 3, "   ", skip, lines)
    # Instance dicts: past 30 attributes CPython 3.11 gives an object a dict of its own
    # (about 1.5 KiB) instead of a share of its class's keys.
    sizes: dict[str, tuple[int, int, list[str]]] = {}
    for o in live:
        d = getattr(o, "__dict__", None)
        if isinstance(d, dict) and not isinstance(o, type) and type(o).__module__ != "builtins" \
                and type(o).__qualname__ not in sizes and len(d) > 12:
            sizes[type(o).__qualname__] = (len(d), sys.getsizeof(d), list(d))
    lines.append("== instance dicts (one object per class, more than 12 attributes)")
    for name, (n, size, keys) in sorted(sizes.items(), key=lambda kv: -kv[1][1])[:25]:
        lines.append(f"   {name}: {n} attributes, {size} bytes: {' '.join(keys)}")
    return "\n".join(lines) + "\n"


# ── the driver ─────────────────────────────────────────────────────────────────────────────

class Relay:
    """The traced relay process and its snapshots."""

    def __init__(self, proc: subprocess.Popen[bytes], out: Path) -> None:
        self.proc, self.out, self.taken = proc, out, 0

    def snapshot(self) -> dict[str, Any]:
        k = self.taken
        self.taken += 1
        self.proc.send_signal(signal.SIGUSR1)
        done = self.out / f"snap-{k}.done"
        end = time.monotonic() + 300
        while not done.exists():
            if time.monotonic() > end or self.proc.poll() is not None:
                raise RuntimeError("no snapshot from the relay")
            time.sleep(0.2)
        with open(self.out / f"snap-{k}.pickle", "rb") as f:
            data: dict[str, Any] = pickle.load(f)
        return data


def hold(port: int, n: int, body: Path) -> subprocess.Popen[bytes]:
    """bench/holdclient.py with ``n`` streams, once they are all open."""
    argv = [sys.executable, str(BENCH / "holdclient.py"), str(port), str(n), str(body),
            "--setup-seconds", "150", "--hold-seconds", "300",
            f"--header=x-api-key: {CLIENT_KEY}", "--header=anthropic-version: 2023-06-01"]
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert p.stdout is not None
    line = p.stdout.readline().decode()
    if not line.startswith("READY "):
        p.kill()
        raise RuntimeError(f"holdclient did not get ready: {line!r}")
    ready = json.loads(line[6:])
    if ready["failed"]:
        print(f"  ({ready['failed']} of {n} streams failed to open)")
    p.held = int(ready["held"])  # type: ignore[attr-defined]
    return p


def release(p: subprocess.Popen[bytes]) -> None:
    """Close the held streams and wait for the client to exit."""
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write(b"close\n")
    p.stdin.flush()
    p.stdout.readline()
    p.wait(60)


def _site(frame: tracemalloc.Frame) -> str:
    name = frame.filename
    for marker in ("site-packages/", "/txrelay/", "/lib/python3"):
        if marker in name:
            name = name.split(marker, 1)[1]
            if marker == "/txrelay/":
                name = "txrelay/" + name
            break
    return f"{name}:{frame.lineno}"


def _owner(tb: tracemalloc.Traceback) -> str:
    """The innermost frame, plus the innermost txrelay frame when that is another."""
    frames = list(reversed(tb))  # a Traceback runs from the oldest frame: most recent first
    head = _site(frames[0])
    ours = next((f for f in frames if "/txrelay/" in f.filename), None)
    if ours is not None and ours is not frames[0]:
        return f"{head}  ← {_site(ours)}"
    return head


def report(case: str, n: int, size: int, before: dict[str, Any], after: dict[str, Any],
           top: int) -> None:
    """Print one case's per-stream breakdown."""
    if after["snapshot"] is None:
        rss = (after["rss_kib"] - before["rss_kib"]) / n
        print(f"### {case} (request body {size:,} bytes), {n} held streams: RSS "
              f"{rss:.1f} KiB per stream (untraced)\n")
        return
    diff = after["snapshot"].compare_to(before["snapshot"], "traceback")
    by_owner: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for stat in diff:
        if stat.size_diff <= 0:
            continue
        row = by_owner[_owner(stat.traceback)]
        row[0] += stat.size_diff
        row[1] += stat.count_diff
    traced = (after["traced"] - before["traced"]) / n / 1024
    rss = (after["rss_kib"] - before["rss_kib"]) / n
    print(f"### {case} (request body {size:,} bytes), {n} held streams\n")
    print(f"traced Python heap: {traced:.1f} KiB per stream; RSS: {rss:.1f} KiB per stream "
          "(tracing itself adds to RSS)\n")
    print("| allocation site (innermost ← innermost txrelay frame) | bytes/stream | blocks |")
    print("|---|---:|---:|")
    rows = sorted(by_owner.items(), key=lambda kv: -kv[1][0])
    shown = 0
    for owner, (sz, cnt) in rows[:top]:
        shown += sz
        print(f"| `{owner}` | {sz / n:,.0f} | {cnt / n:.1f} |")
    rest = sum(sz for _, (sz, _c) in rows[top:])
    print(f"| the rest ({len(rows) - top} sites) | {rest / n:,.0f} | |\n")
    by_file: dict[str, int] = collections.defaultdict(int)
    for stat in diff:
        if stat.size_diff > 0:
            by_file[_site(stat.traceback[-1]).rsplit(":", 1)[0]] += stat.size_diff
    print("| file of the innermost frame | bytes/stream |")
    print("|---|---:|")
    for name, sz in sorted(by_file.items(), key=lambda kv: -kv[1])[:top]:
        print(f"| `{name}` | {sz / n:,.0f} |")
    print()
    by_ours: dict[str, int] = collections.defaultdict(int)
    for stat in diff:
        if stat.size_diff > 0:
            frames = list(reversed(stat.traceback))
            ours = next((f for f in frames if "/txrelay/" in f.filename), frames[-1])
            by_ours[_site(ours)] += stat.size_diff
    print("| innermost txrelay frame (what of ours made it) | bytes/stream |")
    print("|---|---:|")
    for site, sz in sorted(by_ours.items(), key=lambda kv: -kv[1])[:top]:
        print(f"| `{site}` | {sz / n:,.0f} |")
    print()
    grown = {t: after["types"].get(t, 0) - before["types"].get(t, 0)
             for t in after["types"]}
    print("| object type (gc-tracked) | per stream |")
    print("|---|---:|")
    for t, c in sorted(grown.items(), key=lambda kv: -kv[1]):
        if c / n < 0.9:
            break
        print(f"| `{t}` | {c / n:.1f} |")
    print()


def main() -> int:
    """Entry point."""
    if len(sys.argv) > 3 and sys.argv[1] == "--serve":
        return serve(sys.argv[2], int(sys.argv[3]), sys.argv[4:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--n", type=int, default=1000, help="streams held per case")
    p.add_argument("--warmup", type=int, default=200, help="streams held once before")
    p.add_argument("--cases", default="small,cc")
    p.add_argument("--frames", type=int, default=10,
                   help="tracemalloc frames kept (0: no tracing, RSS only)")
    p.add_argument("--relay-src", help="run the relay from this directory (holding txrelay/)")
    p.add_argument("--top", type=int, default=30, help="allocation sites listed")
    p.add_argument("--holders", action="store_true",
                   help="instead: hold --n streams and list who holds one of each "
                        "per-stream object (Exchange, MessagesRequest, Headers, Deferred…)")
    a = p.parse_args()
    import fixtures
    from harness import free_port, wait_port
    venv = BENCH.parent / ".venv" / "bin"
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="memprobe-") as tmp:
        work = Path(tmp)
        fixtures.write_all(work / "fixtures")
        bodies = work / "fixtures" / "bodies"
        up, port = free_port(), free_port()
        key_hash = subprocess.run([str(venv / "txrelay"), "hash-key", CLIENT_KEY], check=True,
                                  capture_output=True, text=True).stdout.strip()
        cfg = work / "relay.toml"
        cfg.write_text(
            f'[server]\nlisten = ["tcp:{port}:interface=127.0.0.1:backlog=4096"]\n'
            'access_log = false\nping_interval = 10.0\n'
            f'[log]\nlevel = "info"\n[[keys]]\nname = "bench"\nsha256 = "{key_hash}"\n'
            '[[providers]]\nname = "hold"\nkind = "openai-chat"\n'
            f'base_url = "http://127.0.0.1:{up}/hold/v1"\n'
            'api_key = { env = "BENCH_UPSTREAM_KEY" }\nmax_idle_connections = 256\n'
            'options = { dialect = "openai" }\n'
            '[[models]]\nid = "bench-hold"\nprovider = "hold"\n'
            f'upstream_model = "{fixtures.UPSTREAM_MODEL}"\npatterns = ["*"]\n'
            '[[pipeline]]\ntype = "auth"\n[[pipeline]]\ntype = "model-map"\n'
            '[[pipeline]]\ntype = "translate"\n')
        snaps = work / "snaps"
        snaps.mkdir()
        env = {**os.environ, "BENCH_UPSTREAM_KEY": UPSTREAM_KEY}
        if a.relay_src:
            env["PYTHONPATH"] = a.relay_src
        try:
            procs.append(subprocess.Popen(
                [sys.executable, str(BENCH / "pyupstream.py"), str(up), "--max-seconds", "1800",
                 "--fixtures", str(work / "fixtures" / "upstream")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
            proc = subprocess.Popen(
                [sys.executable, __file__, "--serve", str(snaps), str(a.frames), "serve",
                 "--config", str(cfg)],
                env=env, stdout=subprocess.DEVNULL, stderr=work.joinpath("relay.log").open("wb"),
                start_new_session=True)
            procs.append(proc)
            relay = Relay(proc, snaps)
            wait_port(up, procs[0], 120)
            wait_port(port, proc, 120)
            for case in a.cases.split(","):
                stem = {"small": "small-stream", "cc": "cc-stream"}[case]
                raw = json.loads((bodies / f"{stem}.anthropic.json").read_bytes())
                raw["model"] = "bench-hold"
                body = work / f"{case}.json"
                body.write_text(json.dumps(raw))
                if a.holders:
                    h = hold(port, a.n, body)
                    proc.send_signal(signal.SIGUSR2)
                    out = snaps / "holders.txt"
                    end = time.monotonic() + 120
                    while not out.exists() and time.monotonic() < end:
                        time.sleep(0.2)
                    time.sleep(0.5)
                    print(f"### {case}: holders\n\n```\n{out.read_text()}```\n")
                    out.unlink()
                    release(h)
                    continue
                release(hold(port, a.warmup, body))
                time.sleep(2)
                before = relay.snapshot()
                h = hold(port, a.n, body)
                time.sleep(1)
                after = relay.snapshot()
                release(h)
                time.sleep(2)
                report(case, h.held, body.stat().st_size, before, after,  # type: ignore[attr-defined]
                       a.top)
        finally:
            for pr in procs:
                pr.terminate()
            for pr in procs:
                try:
                    pr.wait(5)
                except subprocess.TimeoutExpired:
                    pr.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
