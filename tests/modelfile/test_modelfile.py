"""The model file: deterministic, round-trips, validated against its schema, and a
hostile or broken file is refused with one line naming the place."""

from __future__ import annotations

import json

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scriptgen.emulate import Close, Emulator, Machine, NeedData
from scriptgen.errors import ModelFormatError, ModelVersionError
from scriptgen.learn import learn
from scriptgen.modelfile import _validate_schema, dumps, load, loads, port_doc, save, schema
from scriptgen.params import LearnParams

from tests.learn.sessions import session


def _model():
    names = [b"alice", b"bob", b"carol", b"\x00\xff\"'\\"]
    sessions = [session((b"USER " + n + b"\r\n", b"331 for " + n + b"\r\n"), banner=b"220 hi\r\n") for n in names]
    return learn(sessions, LearnParams(jobs=1), sources=["x.pcap"])


def _doc():
    return json.loads(dumps(_model()))


def test_round_trip_is_byte_identical(tmp_path):
    data = dumps(_model())
    assert dumps(loads(data)) == data
    path = tmp_path / "m.json"
    save(_model(), str(path))
    assert path.read_bytes() == data and not list(tmp_path.glob("*.tmp*"))
    assert dumps(load(str(path))) == data


def test_written_files_validate_against_the_shipped_schema():
    jsonschema.validate(_doc(), schema())


def _refused(doc, match, error=ModelFormatError):
    with pytest.raises(error, match=match) as info:
        loads(json.dumps(doc).encode(), "evil.json")
    assert "\n" not in str(info.value) and str(info.value).startswith("evil.json: ")


def test_not_json_and_not_a_model():
    with pytest.raises(ModelFormatError, match="not JSON"):
        loads(b"\x00garbage", "evil.json")
    _refused({"hello": 1}, "not a scriptgen model", ModelVersionError)
    with pytest.raises(ModelFormatError, match="nested too deeply|not JSON"):
        loads(b'{"format": "scriptgen-model", "version": 1, "ports": ' + b"[" * 100000 + b"]" * 100000 + b"}")


def test_each_samples_request_before_is_kept_and_a_version_3_file_loads_without():
    names = [b"alice", b"bob", b"carol"]
    sessions = [session((b"USER " + n + b"\r\n", b"331 for " + n + b"\r\n"), (b"PASS x\r\n", b"230 ok\r\n"))
                for n in names]
    data = dumps(learn(sessions, LearnParams(jobs=1), sources=["x.pcap"]))
    doc = json.loads(data)
    (first, then) = doc["ports"][0]["transitions"]
    assert "before" not in first  # the first requests had none
    assert sorted(loads(data).ports[0].transitions[1].before) == [b"USER " + n + b"\r\n" for n in names]
    assert dumps(loads(data)) == data
    doc["version"] = 3
    del then["before"]
    assert loads(json.dumps(doc).encode()).ports[0].transitions[1].before == ()
    then["before"] = ["VVNFUg=="]  # one, for three samples
    _refused(dict(doc, version=4), "one entry per sample")


def test_newer_version_is_refused_clearly():
    doc = _doc()
    doc["version"] = 99
    _refused(doc, "format version 99 needs a newer scriptgen", ModelVersionError)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d["ports"][0]["states"][0]["labels"][0]["parts"][0].update(bytes="!!not base64"), "must match pattern|base64"),
        (lambda d: d["ports"][0].update(root=999), "no state 999"),
        (lambda d: d["ports"][0]["transitions"][0].update(target=999), "does not exist"),
        (lambda d: d["ports"][0]["transitions"][0].update(id=5), "ids are list positions"),
        (lambda d: d["ports"][0]["states"][0]["labels"][0]["parts"].append({"slot": 0}), "slot must name"),
        (lambda d: d["ports"][0]["transitions"][0]["links"].append({"region": 0, "where": "start:1", "support": 1}),
         "mutating region"),
        (lambda d: d["ports"][0]["transitions"][0]["links"].append({"region": 1, "where": "__import__('os')", "support": 1}),
         "must match pattern"),
        (lambda d: d["ports"][0]["states"][0].update(transitions=[0, 0, 7]), "does not leave"),
        (lambda d: d["ports"][0].update(port=70000), "smaller than or equal to 65535"),
        (lambda d: d["ports"][0]["transitions"][0]["pattern"][1].update(min=9, max=2), "min is larger"),
        (lambda d: d["ports"].append(d["ports"][0]), "appears twice"),
        (lambda d: d.update(extra="x"), "must not contain {'extra'}"),
        # a part or region of two kinds at once fits none of them
        (lambda d: d["ports"][0]["states"][0]["labels"][0]["parts"][0].update(token=0), "none of the kinds"),
        (lambda d: d["ports"][0]["transitions"][0]["pattern"][0].update(min=0), r"pattern\[0\]: must not contain {'min'}"),
    ],
    ids=["base64", "root", "target", "ids", "slot-in-root", "link-fixed", "link-code", "state-transitions",
         "port", "min-max", "duplicate-port", "extra-key", "part-of-two-kinds", "region-of-two-kinds"],
)
def test_malformed_or_hostile_files_are_refused(mutate, match):
    doc = _doc()
    mutate(doc)
    _refused(doc, match)


def test_nan_and_infinity_are_refused():
    # bench/fuzz.py, model #22526: a clock part's offset of NaN passed the schema's bounds
    # and loads(); the emulator's first answer then raised ValueError in time.gmtime.
    doc = _doc()
    doc["ports"][0]["states"][0]["labels"][0]["parts"].append({"clock": "http-date", "offset": 0, "zone": 0})
    text = json.dumps(doc)
    assert loads(text.encode()).ports  # the same file with a finite offset loads
    for constant in ("NaN", "Infinity", "-Infinity"):
        with pytest.raises(ModelFormatError, match=f"not JSON .*{constant}"):
            loads(text.replace('"offset": 0', f'"offset": {constant}').encode(), "evil.json")


def test_size_cap(tmp_path, monkeypatch):
    import scriptgen.modelfile as mf

    path = tmp_path / "big.json"
    path.write_bytes(dumps(_model()))
    monkeypatch.setattr(mf, "MAX_MODEL_BYTES", 100)
    with pytest.raises(ModelFormatError, match="cap"):
        mf.load(str(path))


def test_missing_model_file(tmp_path):
    with pytest.raises(ModelFormatError, match="No such file"):
        load(str(tmp_path / "none.json"))


_EXTREMES = st.sampled_from([-1, 0, 1, 2**31, 2**63, 10**30, 1e308, -1e308, 0.5, "", "x", None, True, [], {}])


def _places(doc, at=()):
    """Every (path to a value) in a document."""
    yield at
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _places(v, (*at, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _places(v, (*at, i))


def _has(node, key):
    if isinstance(node, dict):
        return key in node
    return isinstance(node, list) and isinstance(key, int) and key < len(node)


def _made_extreme(data):
    """A real model's document with 1-3 values anywhere put out of range."""
    doc = _doc()
    places = [p for p in _places(doc) if p]
    for _ in range(data.draw(st.integers(1, 3))):
        *parent, last = data.draw(st.sampled_from(places))
        node = doc
        for key in parent:  # (a place an earlier change replaced is gone: skipped)
            node = node[key] if _has(node, key) else None
        if _has(node, last):
            node[last] = data.draw(_EXTREMES)
    return doc


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_the_loader_validates_as_json_schema_2020_12_does(data):
    """The loader's compiled validator (fastjsonschema, draft 7) takes and refuses what
    jsonschema's 2020-12 validator does with the shipped schema."""
    doc = _made_extreme(data)
    try:
        _validate_schema(doc, "m.json")
        ours = True
    except ModelFormatError:
        ours = False
    assert ours == jsonschema.Draft202012Validator(schema()).is_valid(doc)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_value_of_a_model_made_extreme_is_refused_or_served(data):
    """A real model with values put out of range anywhere: the loader refuses it in one
    line (ModelFormatError) or what it accepts builds a machine and answers a request."""
    doc = _made_extreme(data)
    try:
        model = loads(json.dumps(doc).encode())
    except (ModelFormatError, ModelVersionError) as exc:
        assert "\n" not in str(exc)
        return
    for port in model.ports:
        conn = Emulator(Machine(port_doc(port)), 0.0)
        conn.receive_data(b"USER mallory\r\n", 1.0)
        for now in (1.0, 60.0):
            while not isinstance(conn.next_event(now), (NeedData, Close)):
                pass
