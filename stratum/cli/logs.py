"""``stratum logs NAME [--follow]``: the log lines of a deployment's processes, merged in
time order.

Where they are: the supervisor writes each replica's and gateway's output to
``{home}/logs/NAME/{replica id}.log`` and ``gateway-{slot}.log``; the control plane's own
is ``{home}/logs/control.log`` and a learner started by ``stratum up`` writes
``{home}/logs/learner.log``. Every process writes JSON lines (``monitor.logging``); from the
two shared files only the lines about NAME (their ``deployment`` or ``model`` field) are
shown. A line that is not JSON (a crash's traceback) is shown as it is.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import typer

from stratum.cli.context import get_ctx
from stratum.errors import NotFoundError
from stratum.security.names import validate_name

_SHARED = ("control.log", "learner.log")
_TAIL_BYTES = 512 * 1024  # read at most this much of each file for the first lines
_SHOWN = frozenset(("ts", "level", "logger", "msg", "component", "deployment", "model"))


@dataclass
class Source:
    path: Path
    label: str
    shared: bool  # holds other deployments' lines too: keep only NAME's
    offset: int = 0
    partial: bytes = b""

    def read(self, start_tail: bool = False) -> list[bytes]:
        """Complete lines added since the last read (the first read: the file's tail)."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        if size < self.offset:  # truncated or replaced: start over
            self.offset, self.partial = 0, b""
        if start_tail:
            self.offset = max(0, size - _TAIL_BYTES)
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        if start_tail and self.offset - len(data) > 0 and lines:
            lines = lines[1:]  # the first may be cut
        return [ln for ln in lines if ln.strip()]


@dataclass
class Line:
    ts: str
    source: str
    doc: dict[str, Any] | None
    raw: str

    def render(self) -> str:
        d = self.doc
        if d is None:
            return f"{'':23} {self.source:<12} {self.raw}"
        extra = " ".join(f"{k}={v}" for k, v in d.items() if k not in _SHOWN)
        ts = str(d.get("ts", ""))[:23].replace("T", " ")
        return f"{ts:23} {self.source:<12} {d.get('level', '')!s:<7} {d.get('msg', '')}" \
               + (f"  {extra}" if extra else "")

    def json(self) -> str:
        return orjson.dumps({**(self.doc or {"msg": self.raw}), "source": self.source}).decode()


def sources(home: Path, name: str) -> list[Source]:
    logs = home.expanduser().resolve() / "logs"
    own = [Source(p, p.stem, False) for p in sorted((logs / name).glob("*.log"))]
    return own + [Source(logs / f, f.removesuffix(".log"), True) for f in _SHARED
                  if (logs / f).exists()]


def parse(src: Source, raw: bytes, name: str, last_ts: str) -> Line | None:
    text = raw.decode("utf-8", "replace").rstrip("\r")
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict):
        return None if src.shared else Line(last_ts, src.label, None, text)
    if src.shared and name not in (doc.get("deployment"), doc.get("model"), doc.get("subject")):
        return None
    return Line(str(doc.get("ts", last_ts)), src.label, doc, text)


def collect(srcs: list[Source], name: str, first: bool) -> list[Line]:
    out: list[Line] = []
    for src in srcs:
        last = ""
        for raw in src.read(start_tail=first):
            line = parse(src, raw, name, last)
            if line is not None:
                out.append(line)
                last = line.ts
    return sorted(out, key=lambda ln: ln.ts)  # stable: untimed lines stay behind theirs


def logs(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Deployment (or model) name."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines "
                                "(and new replicas' files) until Ctrl-C."),
    lines: int = typer.Option(50, "--lines", "-n", min=0, help="Lines to show first."),
    as_json: bool = typer.Option(False, "--json", help="The JSON lines as written, each with "
                                 "its `source` file."),
) -> None:
    """Show the logs of a deployment's replicas and gateways (and, from the shared control
    plane and learner logs, the lines about it), merged in time order."""
    home = get_ctx(ctx).settings.home
    validate_name(name, "deployment name")
    srcs = sources(home, name)
    if not any(not s.shared for s in srcs) and not follow:
        raise NotFoundError(f"no logs of {name!r} under {home / 'logs'}",
                            hint="`stratum status` lists the deployments")
    emit = (lambda ln: ln.json()) if as_json else (lambda ln: ln.render())
    for line in collect(srcs, name, first=True)[-lines:] if lines else []:
        sys.stdout.write(emit(line) + "\n")
    sys.stdout.flush()
    known = {s.path for s in srcs}
    try:
        while follow:
            time.sleep(0.5)
            for new in sources(home, name):  # a replica started since: read it whole
                if new.path not in known:
                    known.add(new.path)
                    srcs.append(new)
            for line in collect(srcs, name, first=False):
                sys.stdout.write(emit(line) + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass


def register(app: typer.Typer) -> None:
    app.command("logs")(logs)


__all__ = ["logs", "register"]
