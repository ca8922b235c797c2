"""The versioned model file (DESIGN §4, docs/model-format.md): Model <-> JSON bytes.

One format with an integer version, separate from the release. Writing is deterministic
(sorted keys, stable ids = list positions, base64 bytes): the same capture and
parameters give the same bytes. Loading checks size, parses, migrates older versions one
step at a time, validates against the shipped JSON Schema (`schema.json`) and then the
references between ids, all before building any object. A model file may come from
anyone: nothing in it is ever executed, unpickled or evaluated.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Callable
from importlib import resources
from typing import Any

import fastjsonschema

from scriptgen import __version__
from scriptgen.errors import ModelFormatError, ModelVersionError
from scriptgen.model import (
    Announce, Clock, Count, Framing, Label, Length, Link, Model, Part, Port, PortModel, Region, Slot, State, Token,
    TokenSpec, Transition,
)

__all__ = ["FORMAT", "VERSION", "MAX_MODEL_BYTES", "MAX_PATTERN_BYTES", "dumps", "save", "loads", "load", "schema", "port_doc", "read"]

FORMAT = "scriptgen-model"
VERSION = 4
MAX_MODEL_BYTES = 256 * 1024 * 1024
# Pattern bytes the emulator compiles to regular expressions for one model (all its ports),
# about 1 µs a byte: 0.5 s at most. The largest learned here (smb_dev_rpc) has 30 KB.
MAX_PATTERN_BYTES = 512 * 1024


def _v1_to_v2(doc: dict[str, Any]) -> dict[str, Any]:
    """Version 2 added answer fields, tokens and request framing (issue 7): a version 1
    model has none of them, and was learned with no such rules."""
    for port in doc.get("ports", []) if isinstance(doc.get("ports"), list) else []:
        if isinstance(port, dict):
            port.setdefault("tokens", [])
            port.setdefault("framing", None)
    if isinstance(doc.get("params"), dict):
        doc["params"].setdefault("rules", [])
    return doc


def _v2_to_v3(doc: dict[str, Any]) -> dict[str, Any]:
    """Version 3 added data channels (issue 8): optional keys, absent in a version 2 model."""
    return doc


def _v3_to_v4(doc: dict[str, Any]) -> dict[str, Any]:
    """Version 4 added each sample's request before (`before`): optional, absent in a
    version 3 model, whose answers then depend on no request before."""
    return doc


# version -> function turning a document of that version into the next version's.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4}

_validator: Callable[[Any], Any] | None = None


def schema() -> dict[str, Any]:
    """The JSON Schema of the current format version."""
    loaded: dict[str, Any] = json.loads(resources.files(__package__).joinpath("schema.json").read_text())
    return loaded


# -- writing -------------------------------------------------------------------------------


def dumps(model: Model) -> bytes:
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "generator": f"scriptgen {__version__}",
        "params": model.params,
        "sources": model.sources,
        "ports": [port_doc(p) for p in sorted(model.ports, key=lambda p: (p.transport, p.port))],
    }
    return (json.dumps(doc, sort_keys=True, indent=1, allow_nan=False) + "\n").encode("ascii")


def save(model: Model, path: str) -> None:
    """Write atomically: a crash never leaves half a model where a good one was."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(dumps(model))
    os.replace(tmp, path)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def port_doc(p: PortModel) -> dict[str, Any]:
    """One port as its JSON document: what the emulator core (scriptgen.emulate) reads."""
    return {
        "transport": p.transport,
        "port": p.port,
        "root": p.root,
        "stats": dict(sorted(p.stats.items())),
        "tokens": [{"length": k.length, "charset": k.charset, "samples": [_b64(v) for v in k.samples]} for k in p.tokens],
        "framing": None if p.framing is None else {
            "offset": p.framing.offset, "encoding": p.framing.encoding, "adjust": p.framing.adjust},
        "states": [
            {
                "id": s.id,
                "labels": [{"count": lb.count, "parts": [_part_doc(x) for x in lb.parts]} for lb in s.labels],
                "transitions": list(s.transitions),
                "closes": s.closes,
                "delay": s.delay,
            }
            for s in (p.states[i] for i in sorted(p.states))
        ],
        "transitions": [_transition_doc(p.transitions[i]) for i in sorted(p.transitions)],
    }


def _transition_doc(t: Transition) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": t.id,
        "source": t.source,
        "target": t.target,
        "weight": t.weight,
        "pattern": [_region_doc(r) for r in t.pattern],
        "links": [{"region": k.region, "where": k.where, "support": k.support} for k in t.links],
        "samples": [[_b64(a), _b64(b)] for a, b in t.samples],
    }
    if t.before:
        doc["before"] = [_b64(b) for b in t.before]
    if t.announce is not None:
        doc["announce"] = {"encoding": t.announce.encoding, "where": t.announce.where}
    if t.channel is not None:
        doc["channel"] = port_doc(t.channel)
    return doc


def _part_doc(part: Part) -> dict[str, Any]:
    if isinstance(part, bytes):
        return {"bytes": _b64(part)}
    if isinstance(part, Slot):
        doc: dict[str, Any] = {"slot": part.region}
        if part.start:
            doc["from"] = part.start
        if part.stop is not None:
            doc["to"] = part.stop
        return doc
    if isinstance(part, Token):
        return {"token": part.token}
    if isinstance(part, Clock):
        return {"clock": part.encoding, "offset": part.offset, "zone": part.zone}
    if isinstance(part, Count):
        return {"count": part.region, "encoding": part.encoding, "delta": part.delta, "at": part.at}
    if isinstance(part, Port):
        return {"port": part.encoding, "value": _b64(part.value)}
    return {"length": part.scope, "encoding": part.encoding, "adjust": part.adjust}


_MAX_REGION = 1 << 20


def _region_doc(r: Region) -> dict[str, Any]:
    if r.value is not None:
        return {"fixed": _b64(r.value)}
    # The schema's cap ("size"): a request is at most EmulatorParams.max_request_bytes.
    doc = {"min": min(r.min_len, _MAX_REGION), "max": min(r.max_len, _MAX_REGION), "ascii": r.ascii, "random": r.random,
           "samples": [_b64(s) for s in r.samples]}
    if r.token is not None:
        doc["token"] = r.token
    return doc


# -- reading -------------------------------------------------------------------------------


def load(path: str) -> Model:
    return loads(read(path), path)


def read(path: str) -> bytes:
    """A model file's bytes (what `loads` takes), refused past the size cap before reading."""
    try:
        size = os.path.getsize(path)
        if size > MAX_MODEL_BYTES:
            raise ModelFormatError(path, "", f"file is {size} bytes, over the {MAX_MODEL_BYTES}-byte cap")
        with open(path, "rb") as f:
            return f.read(MAX_MODEL_BYTES + 1)
    except OSError as exc:
        raise ModelFormatError(path, "", exc.strerror or str(exc)) from None


def loads(data: bytes, path: str = "<model>") -> Model:
    if len(data) > MAX_MODEL_BYTES:
        raise ModelFormatError(path, "", f"over the {MAX_MODEL_BYTES}-byte cap")
    try:
        doc = json.loads(data, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise ModelFormatError(path, "", f"not JSON ({str(exc)[:120]})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ModelVersionError(path, "", "not a scriptgen model file (no \"format\": \"scriptgen-model\")")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ModelFormatError(path, "version", "must be a positive integer")
    if version > VERSION:
        raise ModelVersionError(
            path, "version", f"format version {version} needs a newer scriptgen (this one reads up to {VERSION})"
        )
    while version < VERSION:
        doc = MIGRATIONS[version](doc)
        version += 1
        doc["version"] = version
    _validate_schema(doc, path)
    ports = [_port(p, f"ports[{i}]", path) for i, p in enumerate(doc["ports"])]
    size = sum(_pattern_bytes(p) for p in ports)
    if size > MAX_PATTERN_BYTES:
        raise ModelFormatError(path, "ports", f"its patterns hold {size} bytes, over the {MAX_PATTERN_BYTES}-byte cap "
                               "(the emulator compiles them, about a microsecond a byte)")
    seen = set()
    for i, p in enumerate(ports):
        if (p.transport, p.port) in seen:
            raise ModelFormatError(path, f"ports[{i}]", f"{p.transport}/{p.port} appears twice")
        seen.add((p.transport, p.port))
    return Model(ports, dict(doc["params"]), list(doc["sources"]))


def _pattern_bytes(port: PortModel) -> int:
    """What the emulator's patterns of `port` (and of its data channels) compile from: the
    fixed bytes, and a few dozen for each mutating region's group."""
    size = 0
    for t in port.transitions.values():
        size += sum(len(r.value) if r.value is not None else 32 for r in t.pattern)
        if t.channel is not None:
            size += _pattern_bytes(t.channel)
    return size


def _no_constant(name: str) -> float:
    """NaN and Infinity are not JSON (the writer never makes them), and NaN passes every
    bound of the schema: a clock offset of NaN crashed the emulator's first answer."""
    raise ValueError(f"{name} is not a JSON number")


def _validate_schema(doc: dict[str, Any], path: str) -> None:
    """Against schema.json, compiled once to a Python function (fastjsonschema: the code
    is made from the shipped schema, never from the file): a 2 MB model took 2.9 s with
    jsonschema and 0.2 s so. The schema's keywords are all draft 7's, which it reads;
    tests/modelfile check that it and jsonschema's 2020-12 agree on what is valid."""
    global _validator
    if _validator is None:
        _validator = _compile(schema())
    try:
        _validator(doc)
    except RecursionError:
        raise ModelFormatError(path, "", "nested too deeply") from None
    except fastjsonschema.JsonSchemaValueException as error:
        where, message = _place(error)
        if error.rule == "anyOf":
            # A part or region of one kind (its own required key) is told what is wrong
            # with it as that kind, not only that it is none of them.
            value = error.value
            kinds = [alt for alt in error.rule_definition
                     if isinstance(value, dict) and alt.get("required") and set(alt["required"]) <= value.keys()]
            message = "is none of the kinds it may be"
            if len(kinds) == 1:
                try:
                    _compile({"$defs": schema()["$defs"], **kinds[0]})(value)
                except fastjsonschema.JsonSchemaValueException as inner:
                    inner_where, message = _place(inner)
                    where = f"{where}.{inner_where}".strip(".").replace(".[", "[")
        raise ModelFormatError(path, where or "(top)", message[:200]) from None


def _compile(definition: dict[str, Any]) -> Callable[[Any], Any]:
    validate: Callable[[Any], Any] = fastjsonschema.compile(
        {**definition, "$schema": "http://json-schema.org/draft-07/schema#"})
    return validate


def _place(error: Any) -> tuple[str, str]:
    """(where, what) of a fastjsonschema error: `ports[0].port`, `must be ...`."""
    name = str(error.name)
    return name.removeprefix("data").lstrip("."), str(error.message).removeprefix(name).strip()


def _bytes(text: str, where: str, path: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ModelFormatError(path, where, "not valid base64") from None


def _port(doc: dict[str, Any], where: str, path: str, channel: bool = False) -> PortModel:
    n_states, n_trans = len(doc["states"]), len(doc["transitions"])
    if doc["root"] >= n_states:
        raise ModelFormatError(path, f"{where}.root", f"no state {doc['root']}")
    tokens = [TokenSpec(k["length"], k["charset"], tuple(_bytes(v, f"{where}.tokens[{i}]", path) for v in k["samples"]))
              for i, k in enumerate(doc["tokens"])]
    f = doc["framing"]
    framing = None if f is None else Framing(f["offset"], f["encoding"], f["adjust"])
    transitions: dict[int, Transition] = {}
    incoming: dict[int, Transition] = {}
    for i, t in enumerate(doc["transitions"]):
        at = f"{where}.transitions[{i}]"
        if t["id"] != i:
            raise ModelFormatError(path, f"{at}.id", f"must be {i} (ids are list positions)")
        if t["source"] >= n_states or t["target"] >= n_states:
            raise ModelFormatError(path, at, "source or target names a state that does not exist")
        pattern = tuple(_region(r, f"{at}.pattern[{j}]", path, len(tokens)) for j, r in enumerate(t["pattern"]))
        links = []
        for j, k in enumerate(t["links"]):
            if k["region"] >= len(pattern) or pattern[k["region"]].fixed:
                raise ModelFormatError(path, f"{at}.links[{j}]", "must name a mutating region of the pattern")
            links.append(Link(k["region"], k["where"], float(k["support"])))
        samples = tuple(
            (_bytes(a, f"{at}.samples[{j}]", path), _bytes(b, f"{at}.samples[{j}]", path))
            for j, (a, b) in enumerate(t["samples"])
        )
        before = tuple(_bytes(b, f"{at}.before[{j}]", path) for j, b in enumerate(t.get("before", ())))
        if before and len(before) != len(samples):
            raise ModelFormatError(path, f"{at}.before", f"must have one entry per sample ({len(samples)})")
        announce = Announce(t["announce"]["encoding"], t["announce"]["where"]) if "announce" in t else None
        sub = None
        if "channel" in t:
            if channel:
                raise ModelFormatError(path, f"{at}.channel", "a data channel's model has no data channels of its own")
            sub = _port(t["channel"], f"{at}.channel", path, channel=True)
        tr = Transition(i, t["source"], t["target"], pattern, t["weight"], tuple(links), samples, announce, sub, before)
        if t["target"] in incoming or t["target"] == doc["root"]:
            raise ModelFormatError(path, at, f"state {t['target']} has two ways in (the model is a tree)")
        incoming[t["target"]] = tr
        transitions[i] = tr
    states: dict[int, State] = {}
    for i, s in enumerate(doc["states"]):
        at = f"{where}.states[{i}]"
        if s["id"] != i:
            raise ModelFormatError(path, f"{at}.id", f"must be {i} (ids are list positions)")
        for t_id in s["transitions"]:
            if t_id >= n_trans or transitions[t_id].source != i:
                raise ModelFormatError(path, f"{at}.transitions", f"transition {t_id} does not leave this state")
        way_in = incoming.get(i)
        labels = []
        for j, lb in enumerate(s["labels"]):
            parts: list[Part] = []
            for k, part in enumerate(lb["parts"]):
                parts.append(_label_part(part, f"{at}.labels[{j}].parts[{k}]", path, way_in, len(tokens)))
            if parts and isinstance(parts[-1], Length) and parts[-1].scope == "next":
                raise ModelFormatError(path, f"{at}.labels[{j}]", "a length of the next part must have a next part")
            labels.append(Label(tuple(parts), lb["count"]))
        states[i] = State(i, tuple(labels), tuple(s["transitions"]), dict(s["closes"]), s["delay"])
    return PortModel(doc["transport"], doc["port"], doc["root"], states, transitions, dict(doc["stats"]),
                     tokens, framing)


def _label_part(part: dict[str, Any], where: str, path: str, way_in: Transition | None, n_tokens: int) -> Part:
    if "bytes" in part:
        return _bytes(part["bytes"], where, path)
    if "token" in part:
        if part["token"] >= n_tokens:
            raise ModelFormatError(path, where, f"no token {part['token']}")
        return Token(part["token"])
    if "clock" in part:
        return Clock(part["clock"], float(part["offset"]), part["zone"])
    if "length" in part:
        return Length(part["encoding"], part["length"], part["adjust"])
    if "port" in part:
        return Port(part["port"], _bytes(part["value"], where, path))
    region = part["slot"] if "slot" in part else part["count"]
    if way_in is None or region >= len(way_in.pattern) or way_in.pattern[region].fixed:
        raise ModelFormatError(path, where, "slot must name a mutating region of the transition into this state")
    return Slot(region, part.get("from", 0), part.get("to")) if "slot" in part else Count(region, part["encoding"], part["delta"], part["at"])


def _region(doc: dict[str, Any], where: str, path: str, n_tokens: int) -> Region:
    if "fixed" in doc:
        return Region.literal(_bytes(doc["fixed"], where, path))
    if doc["min"] > doc["max"]:
        raise ModelFormatError(path, where, "min is larger than max")
    token = doc.get("token")
    if token is not None and (token >= n_tokens or doc["min"] != doc["max"]):
        raise ModelFormatError(path, where, "a token region must name a token and have one length")
    samples = tuple(_bytes(s, f"{where}.samples", path) for s in doc["samples"])
    return Region(None, doc["min"], doc["max"], doc["ascii"], doc["random"], samples, token)
