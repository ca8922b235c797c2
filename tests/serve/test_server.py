"""The server over real sockets: answers, limits, isolation of failures, the log."""

from __future__ import annotations

import re
import socket
import struct
import time

import pytest

from scriptgen.emulate import Machine
from scriptgen.modelfile import port_doc
from scriptgen.serve import (
    CATALOGUE,
    Listener,
    LogParams,
    ServeError,
    ServeParams,
    check_event,
    plan_listeners,
)
from tests.learn.sessions import session
from tests.serve.harness import (
    BANNER,
    ServerThread,
    _learn,
    connect,
    listener,
    machine,
    read_answer,
    wait_closed,
    wait_until,
)


def by_session(events):
    sessions: dict[str, list] = {}
    for e in events:
        if "session" in e:
            sessions.setdefault(e["session"], []).append(e)
    return sessions


def test_banner_dependency_close_and_what_the_log_says(tmp_path):
    with ServerThread([listener("ftp")], tmp_path) as srv:
        with connect(srv.addr()) as sock:
            assert read_answer(sock, expect=len(BANNER)) == (BANNER, False)
            sock.sendall(b"USER dave\r\n")
            assert read_answer(sock)[0] == b"331 Password required for dave.\r\n"
            sock.sendall(b"PASS x\r\n")
            assert read_answer(sock)[0] == b"230 Logged in.\r\n"
            sock.sendall(b"QUIT\r\n")
            assert read_answer(sock) == (b"221 Bye.\r\n", True)
            port = sock.getsockname()[1]
    events = srv.events()
    assert [e["eventid"] for e in events][0] == "scriptgen.server.start"
    assert events[-1]["eventid"] == "scriptgen.server.stop"
    for e in events:
        assert check_event(e) == [], e
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", e["timestamp"])
        assert e["sensor"] == "test"
    (s,) = by_session(events).values()
    assert [e["eventid"].rsplit(".", 1)[1] for e in s] == [
        "connect", "output", "input", "output", "unmatched", "input", "output", "input", "output", "closed"]
    assert re.fullmatch(r"[0-9a-f]{16}", s[0]["session"])
    assert (s[0]["src_ip"], s[0]["src_port"], s[0]["dst_port"]) == ("127.0.0.1", port, srv.addr()[1])
    assert s[0]["model"] == "ftp.json" and s[0]["model_port"] == 21
    assert s[2]["data"] == "VVNFUiBkYXZlDQo=" and s[2]["size"] == 11 and s[2]["truncated"] is False
    assert s[4]["fallback"] == "nearest"
    closed = s[-1]
    assert closed["reason"] == "server" and closed["path"] == [0, 1, 3, 5]
    assert (closed["inputs"], closed["unmatched"], closed["bytes_in"]) == (3, 1, 25)
    assert closed["bytes_out"] == len(BANNER) + 33 + 16 + 10 and 0 < closed["duration"] < 10


def test_every_event_id_the_code_writes_is_catalogued():
    from pathlib import Path

    import scriptgen.serve.log
    import scriptgen.serve.server

    written = set()
    for module in (scriptgen.serve.server, scriptgen.serve.log):
        written |= set(re.findall(r'"(scriptgen\.[a-z]+\.[a-z_]+)"', Path(module.__file__).read_text()))
    assert written == set(CATALOGUE)


def test_many_models_and_ports_in_one_process(tmp_path):
    ftp = machine("ftp")
    listeners = [listener("ftp"), Listener("tcp", "127.0.0.1", 0, ftp, "ftp2.json", 21),
                 listener("binary"), listener("udp")]
    with ServerThread(listeners, tmp_path) as srv:
        for name in ("ftp", "ftp2"):
            with connect(srv.addr(name)) as sock:
                assert read_answer(sock, expect=len(BANNER))[0] == BANNER
                sock.sendall(b"SYST\r\n")
                assert read_answer(sock, expect=19)[0] == b"215 UNIX Type: L8\r\n"
        with connect(srv.addr("binary")) as sock:
            sock.sendall(b"\x01\x02\x07")
            assert read_answer(sock, expect=2)[0] == b"\x81\x07"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.settimeout(2)
            u.sendto(b"Q\x01\x01\x01\x01", srv.addr("udp"))
            assert u.recvfrom(100)[0] == b"A\x01\x01\x01\x01"
    ports = {e["dst_port"] for e in srv.events() if e["eventid"] == "scriptgen.session.connect"}
    assert len(ports) == 4


def test_plan_listeners_remaps_and_refuses_conflicts():
    ftp = port_doc(_learn([session((b"A\r\n", b"B\r\n"), port=21)]).ports[0])
    udp = {**ftp, "transport": "udp"}
    plan = plan_listeners([("a.json", [ftp, udp])], ["127.0.0.1", "::1"], {(None, 21): 2121, ("udp", 21): 5353})
    assert sorted((ln.transport, ln.host, ln.port, ln.model_port) for ln in plan) == [
        ("tcp", "127.0.0.1", 2121, 21), ("tcp", "::1", 2121, 21),
        ("udp", "127.0.0.1", 5353, 21), ("udp", "::1", 5353, 21)]
    with pytest.raises(ServeError, match="remap one with --port-map"):
        plan_listeners([("a.json", [ftp]), ("b.json", [ftp])], ["127.0.0.1"])
    assert len(plan_listeners([("a.json", [ftp]), ("b.json", [ftp])], ["127.0.0.1"], {(None, 21): 0})) == 2
    with pytest.raises(ServeError, match="no model serves: 80"):
        plan_listeners([("a.json", [ftp])], ["127.0.0.1"], {(None, 80): 8080})
    # Once ports are mapped, one left out is an error (a forgotten one), unless mapped to itself.
    smtp = {**ftp, "port": 25}
    with pytest.raises(ServeError, match=r"maps other ports but not tcp/25 \(b.json\)"):
        plan_listeners([("a.json", [ftp]), ("b.json", [smtp])], ["127.0.0.1"], {(None, 21): 2121})
    plan = plan_listeners([("a.json", [ftp]), ("b.json", [smtp])], ["127.0.0.1"], {(None, 21): 2121, (None, 25): 25})
    assert sorted(ln.port for ln in plan) == [25, 2121]


def closed_by_peer(events) -> dict[tuple[str, int], str]:
    """(src_ip, src_port) -> the reason its session closed."""
    return {(e["src_ip"], e["src_port"]): e["reason"] for e in events if e["eventid"] == "scriptgen.session.closed"}


def test_over_the_connection_cap_the_idlest_session_makes_room(tmp_path):
    with ServerThread([listener("ftp")], tmp_path, ServeParams(max_connections=3)) as srv:
        held = [connect(srv.addr()) for _ in range(3)]
        for sock in held:
            assert read_answer(sock, expect=len(BANNER))[0] == BANNER
        for i in (0, 2):  # held[1] is now the longest without a byte from its client
            held[i].sendall(b"SYST\r\n")
            assert read_answer(held[i], expect=19)[0] == b"215 UNIX Type: L8\r\n"
        first = connect(srv.addr())
        assert read_answer(first, expect=len(BANNER))[0] == BANNER
        assert wait_closed(held[1])
        second = connect(srv.addr())  # then held[0]: its byte came before held[2]'s
        assert read_answer(second, expect=len(BANNER))[0] == BANNER
        assert wait_closed(held[0])
        held[2].sendall(b"SYST\r\n")  # the others are served as before
        assert read_answer(held[2], expect=19)[0] == b"215 UNIX Type: L8\r\n"
        first.sendall(b"SYST\r\n")
        assert read_answer(first, expect=19)[0] == b"215 UNIX Type: L8\r\n"
        peers = [s.getsockname()[:2] for s in (*held, first, second)]
        assert srv.open_sessions() == 3
        for sock in (*held, first, second):
            sock.close()
    events = srv.events()
    reasons = closed_by_peer(events)
    assert [reasons[p] for p in peers] == ["evicted", "evicted", "eof", "eof", "eof"]
    assert (events[-1]["evicted"], events[-1]["refused"]) == (2, 0)
    assert not [e for e in events if e["eventid"] == "scriptgen.session.refused"]


def test_over_the_per_source_cap_the_idlest_session_of_that_address_makes_room(tmp_path):
    with ServerThread([listener("ftp")], tmp_path, ServeParams(max_per_source=2)) as srv:
        other = connect(srv.addr(), source="127.0.0.3")  # the idlest of all, but from another address
        a, b = connect(srv.addr(), source="127.0.0.2"), connect(srv.addr(), source="127.0.0.2")
        for sock in (other, a, b):
            assert read_answer(sock, expect=len(BANNER))[0] == BANNER
        a.sendall(b"SYST\r\n")
        assert read_answer(a, expect=19)[0] == b"215 UNIX Type: L8\r\n"
        newcomer = connect(srv.addr(), source="127.0.0.2")
        assert read_answer(newcomer, expect=len(BANNER))[0] == BANNER
        assert wait_closed(b)
        for sock in (other, a, newcomer):
            sock.sendall(b"SYST\r\n")
            assert read_answer(sock, expect=19)[0] == b"215 UNIX Type: L8\r\n"
        peers = [s.getsockname()[:2] for s in (other, a, b, newcomer)]
        for sock in (other, a, b, newcomer):
            sock.close()
    events = srv.events()
    reasons = closed_by_peer(events)
    assert [reasons[p] for p in peers] == ["eof", "eof", "evicted", "eof"]
    assert events[-1]["evicted"] == 1


def test_a_request_trickled_a_byte_at_a_time_is_cut_at_request_timeout(tmp_path):
    params = ServeParams(request_timeout=0.5, idle_timeout=30)
    with ServerThread([listener("ftp")], tmp_path, params) as srv:
        with connect(srv.addr()) as slow:
            assert read_answer(slow, expect=len(BANNER))[0] == BANNER
            started = time.monotonic()
            # A byte every 0.1 s: the idle timer never fires, the request never completes.
            while not wait_closed(slow, timeout=0.1):
                slow.sendall(b"U")
                assert time.monotonic() - started < 5
            assert 0.45 < time.monotonic() - started < 2.0
        with connect(srv.addr()) as busy:  # requests completed in time, over twice the timeout
            assert read_answer(busy, expect=len(BANNER))[0] == BANNER
            started = time.monotonic()
            while time.monotonic() - started < 1.2:
                busy.sendall(b"SY")
                time.sleep(0.3)
                busy.sendall(b"ST\r\n")
                assert read_answer(busy, expect=19) == (b"215 UNIX Type: L8\r\n", False)
    reasons = [e["reason"] for e in srv.events() if e["eventid"] == "scriptgen.session.closed"]
    assert reasons == ["request-timeout", "eof"]


def test_idle_timeout_and_max_session(tmp_path):
    with ServerThread([listener("ftp")], tmp_path, ServeParams(idle_timeout=0.3, max_session=1.0)) as srv:
        with connect(srv.addr()) as idle:
            started = time.monotonic()
            assert wait_closed(idle, timeout=3)
            assert 0.25 < time.monotonic() - started < 1.0
        with connect(srv.addr()) as busy:
            started = time.monotonic()
            while not wait_closed(busy, timeout=0.1):  # a byte every 0.1 s keeps it from idling
                busy.sendall(b"x")
                assert time.monotonic() - started < 3
            assert 0.9 < time.monotonic() - started < 2.0
    reasons = [e["reason"] for e in srv.events() if e["eventid"] == "scriptgen.session.closed"]
    assert reasons == ["idle", "max-duration"]


def test_a_client_that_does_not_read_is_cut_off(tmp_path):
    big = b"X" * 65536
    m = Machine(port_doc(_learn([session((b"GET\r\n", big), banner=b"hi\r\n") for _ in range(3)]).ports[0]))
    ln = Listener("tcp", "127.0.0.1", 0, m, "big.json", 21)
    with ServerThread([ln], tmp_path, ServeParams(max_buffered=256 * 1024), log_params=LogParams(data_bytes=16)) as srv:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(srv.addr("big"))
        sock.sendall(b"GET\r\n" * 400)  # 26 MB of answers, never read (the kernel holds a few MB)
        with connect(srv.addr("big")) as other:  # meanwhile, the others are served
            assert read_answer(other, expect=4)[0] == b"hi\r\n"
        assert wait_until(lambda: srv.open_sessions() == 0)
        sock.close()
    (closed,) = [e for e in srv.events() if e["eventid"] == "scriptgen.session.closed" and e["reason"] != "eof"]
    assert closed["reason"] == "max-buffered"
    # --log-data-bytes: the first 16 bytes of each 64 KiB answer kept, its size in full
    outputs = [e for e in srv.events() if e["eventid"] == "scriptgen.session.output" and e["size"] == len(big)]
    assert outputs and all(e["truncated"] and e["data"] == "WFhYWFhYWFhYWFhYWFhYWA==" for e in outputs)
    assert outputs[0]["message"].endswith(f" {b'X' * 16!r}...")


def test_max_requests(tmp_path):
    with ServerThread([listener("ftp")], tmp_path, ServeParams(max_requests=5)) as srv, \
            connect(srv.addr()) as sock:
        sock.sendall(b"SYST\r\n" * 8)
        assert wait_closed(sock)
    (closed,) = [e for e in srv.events() if e["eventid"] == "scriptgen.session.closed"]
    assert closed["reason"] == "max-requests" and closed["inputs"] == 6


def test_half_close_still_gets_the_answer_and_reset_is_logged(tmp_path):
    with ServerThread([listener("ftp")], tmp_path) as srv:
        with connect(srv.addr()) as sock:
            read_answer(sock, expect=len(BANNER))
            sock.sendall(b"USER eve\r\n")
            sock.shutdown(socket.SHUT_WR)
            assert read_answer(sock) == (b"331 Password required for eve.\r\n", True)
        sock = connect(srv.addr())
        read_answer(sock, expect=len(BANNER))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # RST
        assert wait_until(lambda: srv.open_sessions() == 0)
    reasons = [e["reason"] for e in srv.events() if e["eventid"] == "scriptgen.session.closed"]
    assert reasons[0] == "eof" and reasons[1] in ("reset", "eof")


def test_a_failing_session_is_closed_and_logged_and_the_others_go_on(tmp_path, capsys):
    broken = machine("ftp")
    target = broken.states[broken.root].literal[b"SYST\r\n"].target
    del broken.states[target]  # entering that state raises inside the engine
    ln = Listener("tcp", "127.0.0.1", 0, broken, "ftp.json", 21)
    with ServerThread([ln], tmp_path) as srv:
        with connect(srv.addr()) as good, connect(srv.addr()) as bad:
            read_answer(good, expect=len(BANNER))
            read_answer(bad, expect=len(BANNER))
            good.sendall(b"USER a\r\n")
            bad.sendall(b"SYST\r\n")
            assert wait_closed(bad)
            assert read_answer(good)[0] == b"331 Password required for a.\r\n"
            good.sendall(b"PASS secret\r\n")
            assert read_answer(good)[0] == b"230 Logged in.\r\n"
        with connect(srv.addr()) as later:
            assert read_answer(later, expect=len(BANNER))[0] == BANNER
    events = srv.events()
    (error,) = [e for e in events if e["eventid"] == "scriptgen.session.error"]
    assert error["error"].startswith("KeyError")
    closed = {e["session"]: e["reason"] for e in events if e["eventid"] == "scriptgen.session.closed"}
    assert closed[error["session"]] == "error" and sorted(closed.values()) == ["eof", "eof", "error"]
    assert events[-1]["errors"] == 1
    assert "Traceback" in capsys.readouterr().err


def test_udp_peers_are_sessions_each(tmp_path):
    with ServerThread([listener("udp")], tmp_path, ServeParams(udp_idle_timeout=0.3)) as srv:
        peers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
        for i, u in enumerate(peers):
            u.settimeout(2)
            u.sendto(b"Q" + bytes([i]) * 4, srv.addr("udp"))
            assert u.recvfrom(100)[0] == b"A" + bytes([i]) * 4
        assert srv.open_sessions() == 3
        assert wait_until(lambda: srv.open_sessions() == 0, timeout=3)
        for u in peers:
            u.close()
    closed = [e for e in srv.events() if e["eventid"] == "scriptgen.session.closed"]
    assert len(closed) == 3 and {e["reason"] for e in closed} == {"idle"}
    assert all(e["transport"] == "udp" and e["path"][0] == 0 and len(e["path"]) == 2 for e in closed)


def test_a_udp_peer_over_the_cap_makes_room_by_evicting_the_idlest(tmp_path):
    with ServerThread([listener("udp")], tmp_path, ServeParams(max_connections=1)) as srv:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as first, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as second:
            first.settimeout(2)
            second.settimeout(2)
            first.sendto(b"Q\x01\x01\x01\x01", srv.addr("udp"))
            assert first.recvfrom(100)[0] == b"A\x01\x01\x01\x01"
            second.sendto(b"Q\x01\x01\x01\x01", srv.addr("udp"))
            assert second.recvfrom(100)[0] == b"A\x01\x01\x01\x01"
            first.sendto(b"Q\x02\x02\x02\x02", srv.addr("udp"))  # a new session, that evicts the second
            assert first.recvfrom(100)[0] == b"A\x02\x02\x02\x02"
            assert srv.open_sessions() == 1
    events = srv.events()
    closed = [e["reason"] for e in events if e["eventid"] == "scriptgen.session.closed"]
    assert closed == ["evicted", "evicted", "shutdown"]
    assert len([e for e in events if e["eventid"] == "scriptgen.session.connect"]) == 3
    assert not [e for e in events if e["eventid"] == "scriptgen.session.refused"]


def test_while_shutting_down_a_new_peer_is_refused(tmp_path):
    with ServerThread([listener("ftp"), listener("udp")], tmp_path, ServeParams(grace=5.0)) as srv:
        held = connect(srv.addr())  # keeps the grace period going
        assert read_answer(held, expect=len(BANNER))[0] == BANNER
        srv.begin_shutdown()
        assert wait_until(lambda: not srv.call(lambda: srv.server._accepting))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as late:
            late.sendto(b"Q\x01\x01\x01\x01", srv.addr("udp"))
            assert wait_until(lambda: srv.call(lambda: srv.server.refused) == 1)
        held.close()
    events = srv.events()
    (refused,) = [e for e in events if e["eventid"] == "scriptgen.session.refused"]
    assert refused["transport"] == "udp" and refused["reason"] == "shutdown"
    assert events[-1]["refused"] == 1 and events[-1]["forced"] == 0
