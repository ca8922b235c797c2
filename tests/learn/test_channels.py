"""Data channels (issue 8): connections announced inside another conversation are found
in the capture, linked to the request they answer, and served again by the emulator on
ports of its own. The protocol of the acceptance test (tests/learn/channelproto.py) is
binary and announces its ports as two bytes big endian: nothing FTP-like."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from scriptgen.capture import read_sessions
from scriptgen.emulate import Channel, Close, Connect, Emulator, Listen, Machine, NeedData, Send
from scriptgen.emulate.engine import decode_port, encode_port
from scriptgen.learn import learn
from scriptgen.learn.channels import find_channels, find_port
from scriptgen.model import Port
from scriptgen.modelfile import dumps, loads, port_doc
from scriptgen.params import LearnParams
from scriptgen.serve import Listener
from tests.learn import channelproto
from tests.serve.harness import ServerThread


@pytest.mark.parametrize(("data", "encoding"), [
    (b"227 Entering Passive Mode (10,1,2,3,156,64).\r\n", "ip-pair"),
    (b"227 Entering Passive Mode (9,9,9,9,156,64).\r\n", "pair"),  # another address: the port only
    (b"229 Entering Extended Passive Mode (|||40000|)\r\n", "dec"),
    (b"\x00\x07OPEN\x9c\x40\x03abc", "u16be"),
])
def test_a_port_is_found_in_each_encoding(data, encoding):
    start, end, found = find_port(data, 40000, "10.1.2.3")
    assert found == encoding
    side_end = len(data) - end
    assert decode_port(data, encoding, "start", start) == 40000
    assert decode_port(data, encoding, "end", side_end) == 40000
    rewritten = data[:start] + encode_port(1234, encoding, "192.0.2.7", data[start:end]) + data[end:]
    assert decode_port(rewritten, encoding, "end", side_end) == 1234


def test_ports_in_text_by_chance_are_not_found():
    assert find_port(b"213 140000\r\n", 40000, "127.0.0.1") is None  # a longer number
    assert find_port(b"HELLO a::b\r\n", 0x3A3A, "127.0.0.1") is None  # "::" is port 14906 in binary: text has none
    assert decode_port(b"PORT 1,2,3,4,300,1\r\n", "ip-pair", "end", 2) is None  # not a byte


@pytest.fixture(scope="module")
def channel_capture(tmp_path_factory):
    names = [b"alpha", b"beta", b"gamma.txt", b"d", b"a-much-longer-name-for-the-data"]
    return channelproto.capture(tmp_path_factory.mktemp("channels"), 30, names, per_session=3), names


def _model(pcap, rules=None):
    sessions = list(read_sessions([str(pcap)]))
    params = LearnParams(jobs=1) if rules is None else LearnParams(jobs=1, rules=rules)
    return sessions, learn(sessions, params)


def test_learning_links_every_data_connection_to_its_control_session(channel_capture):
    pcap, _ = channel_capture
    sessions, model = _model(pcap)
    links = find_channels(sessions)
    control = [s for s in sessions if s.messages and s.messages[0].data[2:6] in (b"GET\0", b"PUSH")]
    assert len(control) == 30 and len(links) == len(sessions) - 30 >= 90
    assert {link.mark.encoding for link in links.values()} == {"u16be"}
    assert {link.connect for link in links.values()} == {True, False}  # both directions
    (port,) = model.ports  # the data connections are not ports of their own
    announces = [t for t in port.transitions.values() if t.announce]
    assert announces and all(t.announce.encoding == "u16be" for t in announces)
    ports = [p for s in port.states.values() for lb in s.labels[:1] for p in lb.parts if isinstance(p, Port)]
    assert ports and {p.encoding for p in ports} == {"u16be"}
    assert sum(1 for t in port.transitions.values() if t.channel) >= 2
    assert loads(dumps(model)) == model


def _served(port_model, conversations):
    """Each (name, mode) in a control connection of its own, against the emulator served
    over real sockets: the problems the client found, and the event log."""
    machine = Machine(port_doc(port_model))
    listener = Listener("tcp", "127.0.0.1", 0, machine, "channels.json", port_model.port)
    with tempfile.TemporaryDirectory() as log_dir, ServerThread([listener], Path(log_dir)) as srv:
        problems = [p for name, mode in conversations
                    for p in channelproto.converse(*srv.addr("channels"), [name], mode, timeout=3.0)]
        srv.stop()
        return problems, srv.events()


def test_the_emulator_serves_data_channels_both_ways_to_the_real_client(channel_capture):
    pcap, names = channel_capture
    _, model = _model(pcap)
    conversations = [(name, mode) for name in names for mode in channelproto.MODES]
    problems, events = _served(model.ports[0], conversations)
    assert problems == []
    # The log names each data connection's parent, and logs how it was set up.
    connects = [e for e in events if e["eventid"] == "scriptgen.session.connect"]
    control = {e["session"] for e in connects if e["parent"] is None}
    data = [e for e in connects if e["parent"] is not None]
    assert len(control) == len(data) == len(conversations)
    assert {e["parent"] for e in data} == control
    actions = sorted(e["action"] for e in events if e["eventid"] == "scriptgen.session.channel")
    assert actions == ["connect"] * len(names) + ["listen"] * len(names)
    closed = {e["session"] for e in events if e["eventid"] == "scriptgen.session.closed"}
    assert closed == {e["session"] for e in connects}


def test_without_the_channel_rule_the_client_fails(channel_capture):
    pcap, names = channel_capture
    _, model = _model(pcap, rules=("lengths", "counters", "tokens", "clocks", "framing"))
    control = max(model.ports, key=lambda p: p.stats["sessions"])
    problems, _ = _served(control, [(names[0], "get"), (names[0], "push")])
    assert len(problems) == 2


def test_engine_events_for_a_data_channel(channel_capture):
    """Sans-I/O: the answer waits for `listening`, and names the emulator's port."""
    pcap, names = channel_capture
    _, model = _model(pcap)
    machine = Machine(port_doc(model.ports[0]))
    conn = Emulator(machine, 0.0)
    request = channelproto.frame(b"GET\0" + bytes([len(names[0])]) + names[0])
    conn.receive_data(request, 0.0)
    events = []
    now = 0.0
    while True:
        event = conn.next_event(now)
        events.append(event)
        if isinstance(event, Listen):
            assert isinstance(conn.next_event(now), NeedData)  # nothing goes out before the port is known
            conn.listening(4242, "127.0.0.1")
        elif isinstance(event, NeedData):
            if event.wake_at is None:
                break
            now = event.wake_at
    kinds = [type(e) for e in events]
    assert Channel in kinds and Listen in kinds and Connect not in kinds
    (answer,) = [e.data for e in events if isinstance(e, Send)]
    assert answer[2:6] == b"OPEN" and answer[6:8] == (4242).to_bytes(2, "big")
    channel = next(e for e in events if isinstance(e, Channel))
    data = Emulator(channel.machine, 0.0, first=channel.request)
    sent = b""
    while not isinstance(event := data.next_event(1.0), NeedData | Close):
        if isinstance(event, Send):
            sent += event.data
    assert sent == channelproto.content(names[0])
    assert isinstance(event, Close) and event.reason == "server"  # as the real server closed it


def test_data_channel_listeners_are_bounded_and_expire(channel_capture):
    """A client that asks for data channels and never connects gets at most
    `max_session_channels` listeners; the rest are refused, and the listeners expire."""
    import socket
    import time

    from scriptgen.serve import ServeParams

    pcap, names = channel_capture
    _, model = _model(pcap)
    machine = Machine(port_doc(model.ports[0]))
    listener = Listener("tcp", "127.0.0.1", 0, machine, "channels.json", model.ports[0].port)
    params = ServeParams(max_session_channels=2, channel_timeout=0.5)
    with tempfile.TemporaryDirectory() as log_dir, ServerThread([listener], Path(log_dir), params) as srv:
        with socket.create_connection(srv.addr("channels"), timeout=3) as ctrl:
            for name in names[:3]:
                ctrl.sendall(channelproto.frame(b"GET\0" + bytes([len(name)]) + name))
                assert channelproto.read_frame(ctrl)[:4] == b"OPEN"  # answered either way
            time.sleep(1.0)
        srv.stop()
        events = srv.events()
    actions = [e["action"] for e in events if e["eventid"] == "scriptgen.session.channel"]
    assert sorted(actions) == ["expired", "expired", "listen", "listen", "refused"]


def test_a_data_channel_never_evicts_its_own_control_connection(channel_capture):
    """At the per-address cap, a data connection (from the client's own address) is admitted
    one over it rather than close the connection it serves."""
    from scriptgen.serve import ServeParams

    pcap, names = channel_capture
    _, model = _model(pcap)
    machine = Machine(port_doc(model.ports[0]))
    listener = Listener("tcp", "127.0.0.1", 0, machine, "channels.json", model.ports[0].port)
    with tempfile.TemporaryDirectory() as log_dir, \
            ServerThread([listener], Path(log_dir), ServeParams(max_per_source=1)) as srv:
        problems = channelproto.converse(*srv.addr("channels"), names[:2], "get", timeout=3.0)
        srv.stop()
        events = srv.events()
    assert problems == []
    assert len([e for e in events if e["eventid"] == "scriptgen.session.connect" and e["parent"]]) == 2
    assert events[-1]["evicted"] == 0


FTP_TOOLS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "dev" / "ftp" / "ftp_dev_tools"


@pytest.mark.skipif(not FTP_TOOLS.with_suffix(".pcap").exists(), reason="../shared/corpus is absent")
def test_curl_against_the_emulator_of_the_corpus_vsftpd_prints_what_it_printed_there(tmp_path):
    """The corpus capture's own curl commands (listings, downloads in passive and active
    mode) against the emulator learned from it: each prints what it printed against the
    real vsftpd (.clients.log), and each download holds the bytes the capture has for it."""
    import json
    import shutil
    import subprocess

    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    sessions = list(read_sessions([str(FTP_TOOLS.with_suffix(".pcap"))]))
    model = learn(sessions, LearnParams(jobs=1))
    control = model.port("tcp", 21)
    assert control is not None and len(model.ports) == 1  # the data connections are inside
    downloads = {}  # file name -> the bytes its data connection carried
    for child, link in find_channels(sessions).items():
        parent = sessions[link.parent]
        trigger = parent.messages[link.trigger].data if link.trigger is not None else b""
        if trigger.startswith(b"RETR "):
            downloads[trigger[5:].strip().decode()] = b"".join(m.data for m in sessions[child].messages)
    commands = [json.loads(line) for line in FTP_TOOLS.with_suffix(".cmds.jsonl").read_text().splitlines()]
    commands = [c for c in commands if c["tool"] == "curl" and "-T" not in c["argv"] and "-Q" not in c["argv"]]
    printed = {}
    for section in FTP_TOOLS.with_suffix(".clients.log").read_text().split("===== ")[1:]:
        header, _, body = section.partition("\n")
        printed[header.split(" $ ", 1)[1].strip()] = body.strip()
    machine = Machine(port_doc(control))
    listener = Listener("tcp", "127.0.0.1", 0, machine, "ftp.json", 21)
    checked = 0
    with ServerThread([listener], tmp_path / "log") as srv:
        port = srv.addr("ftp")[1]
        for c in commands:
            argv = [a.replace("ftp://127.0.0.1/", f"ftp://127.0.0.1:{port}/") for a in c["argv"]]
            done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=30, check=False)
            assert done.returncode == c["rc"], (c["cmdline"], done.stderr)
            assert (done.stdout + done.stderr).strip() == printed[c["cmdline"]], c["cmdline"]
            if "-o" in argv:
                name = argv[argv.index("-o") + 1]
                remote = argv[-1].rsplit("/", 1)[1]
                assert (tmp_path / name).read_bytes() == downloads[remote], c["cmdline"]
            checked += 1
    assert checked == len(commands) >= 8
