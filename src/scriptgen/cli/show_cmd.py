"""`scriptgen show`: a model as text, JSON counts, or a graphviz picture."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from typing import Any

from scriptgen.cli.common import port, warn
from scriptgen.model import Clock, Count, Label, Part, Port, PortModel, Region, Slot, Token

__all__ = ["add_parser", "pattern_text", "label_text"]

_PREVIEW = 48


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "show",
        help="show a model: summary, state machine as text, or a picture",
        description=(
            "Without -o: a summary per port and its state machine as text. Requests are shown with "
            "fixed bytes as text (escaped) and mutating regions as <len> or <min-max> placeholders; "
            "$N in an answer is a dependency link (the request's region N copied back). With -o: "
            "a graph (DOT, or SVG/PNG through graphviz's `dot`), edges labelled with patterns and weights."
        ),
        epilog="examples:\n  scriptgen show ftp.model.json\n  scriptgen show ftp.model.json --port 21 -o ftp.svg\n"
        "  scriptgen show ftp.model.json --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL", help="model file written by `scriptgen learn`")
    parser.add_argument("--port", "-p", type=port, action="append", dest="ports", metavar="P",
                        help="only this port (repeatable)")
    parser.add_argument("-o", "--output", metavar="FILE", help="write a graph: .dot, .svg or .png")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per port: transport, port, states, transitions, links, stats")
    parser.add_argument("--max-states", type=int, default=200, metavar="N",
                        help="states listed per port in the text view (default: %(default)s)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from scriptgen.modelfile import load

    model = load(args.model)
    ports = [p for p in model.ports if not args.ports or p.port in args.ports]
    out = sys.stdout
    if args.json:
        for p in ports:
            out.write(json.dumps({
                "transport": p.transport, "port": p.port, "states": len(p.states),
                "transitions": len(p.transitions),
                "links": sum(len(t.links) for t in p.transitions.values()), "stats": p.stats,
            }, sort_keys=True) + "\n")
        return 0
    if args.output:
        return _graph(ports, args.output)
    for p in ports:
        _text(p, args.max_states, out)
    if not ports:
        out.write("(no ports in this model" + (" match --port)" if args.ports else ")") + "\n")
    return 0


def pattern_text(pattern: tuple[Region, ...]) -> str:
    out = []
    for i, r in enumerate(pattern):
        if r.value is not None:
            out.append(_escape(r.value))
        elif r.token is not None:
            out.append(f"<${i}:token {r.token}>")
        else:
            size = str(r.min_len) if r.min_len == r.max_len else f"{r.min_len}-{r.max_len}"
            out.append(f"<{'$' + str(i) + ':' if r.random else ''}{size}{'' if r.ascii else ' bin'}>")
    return "".join(out)


def label_text(label: Label | None) -> str:
    if label is None:
        return "(silence)"
    return "".join(part_text(p) for p in label.parts) or "(silence)"


def part_text(p: Part) -> str:
    """An answer part as `show` prints it: bytes escaped, fields in braces."""
    if isinstance(p, bytes):
        return _escape(p)
    if isinstance(p, Slot):
        cut = "" if (p.start, p.stop) == (0, None) else f"[{p.start}:{'' if p.stop is None else p.stop}]"
        return f"${p.region}{cut}"
    if isinstance(p, Token):
        return f"{{token {p.token}}}"
    if isinstance(p, Clock):
        return f"{{time {p.encoding}{f' {p.offset:+g}s' if p.offset else ''}}}"
    if isinstance(p, Count):
        at = f"[{p.at}]" if p.at else ""
        return f"{{${p.region}{at} {p.encoding} {p.delta:+d}}}"
    if isinstance(p, Port):
        return f"{{data port {p.encoding}}}"
    return f"{{length {p.scope} {p.encoding}{f' {p.adjust:+d}' if p.adjust else ''}}}"


def _escape(data: bytes, limit: int = _PREVIEW) -> str:
    text = data[:limit].decode("latin-1").encode("unicode_escape").decode("ascii")
    return text + ("..." if len(data) > limit else "")


def _text(p: PortModel, limit: int, out: Any) -> None:
    st = p.stats
    out.write(f"{p.transport}/{p.port}: {st.get('sessions', 0)} sessions, raw {st.get('raw_states', 0)} states -> "
              f"{len(p.states)} states, {len(p.transitions)} transitions, "
              f"{sum(len(t.links) for t in p.transitions.values())} links\n")
    fields = [type(x).__name__ for s in p.states.values() for lb in s.labels[:1] for x in lb.parts
              if not isinstance(x, bytes | Slot)]
    if fields or p.framing:
        counted = ", ".join(f"{fields.count(k)} {k.lower()}" for k in ("Token", "Clock", "Count", "Length", "Port")
                            if k in fields)
        out.write(f"  answer fields: {counted or 'none'}")
        for i, k in enumerate(p.tokens):
            out.write(f"; token {i}: {k.length} bytes of {k.charset}")
        if p.framing:
            f = p.framing
            out.write(f"; requests framed: length {f.encoding} at byte {f.offset}"
                      f"{f' plus {f.adjust}' if f.adjust else ''}")
        out.write("\n")
    shown = 0
    for sid in sorted(p.states):
        if shown >= limit:
            out.write(f"  ... {len(p.states) - shown} more states (--max-states)\n")
            break
        s = p.states[sid]
        shown += 1
        closes = ", ".join(f"{k} {v}" for k, v in s.closes.items())
        out.write(f"  S{sid}: {label_text(s.default)}" + (f"  [closed by: {closes}]" if closes else "") + "\n")
        for t_id in s.transitions:
            t = p.transitions[t_id]
            links = "".join(f" ${k.region}@{k.where}" for k in t.links)
            announce = f" {{client's data port {t.announce.encoding} @{t.announce.where}}}" if t.announce else ""
            out.write(f"    --[{pattern_text(t.pattern)}]{announce} x{t.weight}{links}--> S{t.target}\n")
            if t.channel is not None:
                c = t.channel
                out.write(f"      data channel: {c.stats.get('sessions', 0)} connections, {len(c.states)} states; "
                          f"sends {label_text(_first_answer(c))}\n")


def _first_answer(channel: PortModel) -> Label | None:
    """What a data channel sends first: its banner, else the answer to its first request."""
    root = channel.states[channel.root]
    if root.default is not None and root.default.parts:
        return root.default
    heaviest = max((channel.transitions[t] for t in root.transitions), key=lambda t: t.weight, default=None)
    return channel.states[heaviest.target].default if heaviest is not None else None


def _dot(ports: list[PortModel]) -> str:
    lines = ["digraph scriptgen {", "  rankdir=LR;", '  node [shape=box, fontname="monospace", fontsize=9];',
             '  edge [fontname="monospace", fontsize=8];']
    for p in ports:
        lines.append(f'  subgraph "cluster_{p.transport}_{p.port}" {{')
        lines.append(f'    label="{p.transport}/{p.port}";')
        for sid, s in sorted(p.states.items()):
            lines.append(f'    "{p.port}_{sid}" [label={_dot_str(f"S{sid}: " + label_text(s.default)[:40])}];')
        for t in sorted(p.transitions.values(), key=lambda t: t.id):
            text = f"{pattern_text(t.pattern)[:40]} x{t.weight}"
            lines.append(f'    "{p.port}_{t.source}" -> "{p.port}_{t.target}" [label={_dot_str(text)}];')
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _dot_str(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid DOT quoted string (escaped quotes and backslashes)


def _graph(ports: list[PortModel], output: str) -> int:
    dot = _dot(ports)
    kind = output.rsplit(".", 1)[-1].lower()
    if kind == "dot":
        with open(output, "w") as f:
            f.write(dot)
        return 0
    if kind not in ("svg", "png", "pdf"):
        warn(f"error: cannot tell the picture format from {output!r}: use .dot, .svg, .png or .pdf")
        return 2
    exe = shutil.which("dot")
    if exe is None:
        warn("error: graphviz's `dot` is not installed (apt-get install graphviz); or write .dot")
        return 3
    subprocess.run([exe, f"-T{kind}", "-o", output], input=dot.encode(), check=True, timeout=300)
    return 0
