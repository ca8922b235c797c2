"""The learn stage on hand-made sessions: the paper's behaviour, visible in the model."""

from __future__ import annotations

import re

from scriptgen.learn import learn
from scriptgen.model import PortModel, Region, Sender, Session, Slot, Transport
from scriptgen.params import LearnParams

from tests.learn.sessions import session

BANNER = b"220 ready\r\n"


def ftp_users(names=(b"alice", b"bob", b"carol")):
    return [session((b"USER " + n + b"\r\n", b"331 Password required for " + n + b".\r\n"), (b"QUIT\r\n", b"221 bye\r\n"),
                    banner=BANNER) for n in names]


def only_port(sessions, **kw) -> PortModel:
    model = learn(sessions, LearnParams(jobs=1, **kw))
    (port,) = model.ports
    return port


def regex(pattern: tuple[Region, ...]) -> re.Pattern[bytes]:
    """What the emulator compiles (test-side copy): fixed literal, mutating bounded."""
    return re.compile(b"".join(re.escape(r.value) if r.value is not None else b"(.{%d,%d})" % (r.min_len, r.max_len + 8)
                               for r in pattern), re.DOTALL)


def test_user_names_become_one_transition_with_a_mutating_name_and_a_link():
    port = only_port(ftp_users())
    root = port.states[port.root]
    assert root.default.parts == (BANNER,)
    (t_id,) = root.transitions
    t = port.transitions[t_id]
    assert t.weight == 3
    fixed = [r.value for r in t.pattern if r.fixed]
    assert fixed[0] == b"USER " and fixed[-1] == b"\r\n"
    mutating = [i for i, r in enumerate(t.pattern) if not r.fixed]
    assert len(mutating) == 1
    # USER dave is matched, and the link makes the answer name dave.
    m = regex(t.pattern).fullmatch(b"USER dave\r\n")
    assert m is not None
    (link,) = t.links
    assert link.region == mutating[0] and link.support == 1.0
    target = port.states[t.target]
    assert target.default.count == 3
    assert Slot(link.region) in target.default.parts
    assert target.default.render({link.region: m.group(1)}) == b"331 Password required for dave.\r\n"
    # The states after the three USER requests merged: one QUIT transition of weight 3.
    (quit_id,) = target.transitions
    assert port.transitions[quit_id].weight == 3
    assert port.states[port.transitions[quit_id].target].closes == {"client": 3}


def test_binary_id_echoed_at_a_fixed_offset_is_a_link():
    import random

    rng = random.Random(5)
    sessions = []
    for _ in range(12):
        ident = bytes(rng.randrange(256) for _ in range(4))
        sessions.append(session((b"\x00\x01\x00\x08" + ident + b"\xfe\xed", b"\x80\x01" + ident + b"\x00\x00OK"), port=9000))
    port = only_port(sessions)
    (t_id,) = port.states[port.root].transitions
    t = port.transitions[t_id]
    assert t.pattern[0].value == b"\x00\x01\x00\x08" and t.pattern[-1].value == b"\xfe\xed"
    (link,) = t.links
    assert link.where == "start:2"
    target = port.states[t.target]
    assert len(target.labels) == 1
    assert target.default.parts == (b"\x80\x01", Slot(link.region), b"\x00\x00OK")
    fresh = b"\xde\xad\xbe\xef"
    m = regex(t.pattern).fullmatch(b"\x00\x01\x00\x08" + fresh + b"\xfe\xed")
    assert m is not None and target.default.render({link.region: m.group(1)}) == b"\x80\x01" + fresh + b"\x00\x00OK"


def test_frequent_commands_stay_apart_with_microclustering():
    sessions = ftp_users((b"alice", b"bob", b"carol", b"dave")) + [
        session((b"SYST\r\n", b"215 UNIX\r\n"), banner=BANNER) for _ in range(3)]
    port = only_port(sessions)
    patterns = sorted(port.transitions[t].pattern[0].value or b"" for t in port.states[port.root].transitions)
    assert patterns == [b"SYST\r\n", b"USER "]


def test_threshold_extremes():
    sessions = ftp_users((b"alice", b"bob", b"carol", b"dave", b"eve")) + [
        session((b"USER x\r\n", b"331\r\n"), (b"PASS " + p + b"\r\n", b"230\r\n"), banner=BANNER) for p in (b"a", b"bb", b"ccc")]
    raw = only_port(sessions, macro=0.0, micro=0.0)
    assert raw.stats["states"] == raw.stats["raw_states"]
    also_raw = only_port(sessions, macro=0.0, micro=1.0)
    assert also_raw.stats["states"] == raw.stats["raw_states"]
    fewest = only_port(sessions, macro=1.0, micro=1.0)
    middle = only_port(sessions, macro=0.5, micro=0.5)
    assert fewest.stats["states"] < middle.stats["states"] <= raw.stats["states"]
    assert fewest.stats["states"] == min(
        only_port(sessions, macro=w, micro=m).stats["states"] for w in (0.0, 0.3, 0.7, 1.0) for m in (0.0, 0.3, 0.7, 1.0))


def test_closes_delays_and_fanout_cut():
    sessions = [session((b"REQ %d\r\n" % i, b"OK\r\n"), closed_by=Sender.SERVER) for i in range(10)]
    port = only_port(sessions, max_fanout=4, macro=0.0, micro=0.0)
    assert port.stats["cut_fanout"] == 6
    assert port.stats["sessions"] == 10
    assert len(port.states[port.root].transitions) == 4
    s = port.states[port.transitions[port.states[port.root].transitions[0]].target]
    assert s.delay == 0.002 and s.closes == {"server": 1}


def test_same_sessions_give_the_same_file_whatever_the_worker_count():
    from scriptgen.modelfile import dumps

    # 30 distinct requests at the root: its clustering runs in a worker when jobs > 1.
    sessions = ftp_users(tuple(b"user%d" % i for i in range(30)))
    sessions += [session((b"SYST\r\n", b"215 UNIX\r\n"), banner=BANNER), session((b"PING\r\n", b"PONG\r\n"), port=7000)]
    first = dumps(learn(sessions, LearnParams(jobs=1)))
    second = dumps(learn(sessions, LearnParams(jobs=2)))
    assert first == second


def test_requests_beyond_the_aligned_sample_join_the_nearest_cluster():
    names = tuple(b"name%02d" % i for i in range(40))
    port = only_port(ftp_users(names), align_sample=6)  # 34 requests are assigned, not aligned
    (t_id,) = port.states[port.root].transitions
    t = port.transitions[t_id]
    assert t.weight == 40
    name = next(r for r in t.pattern if not r.fixed)
    assert (name.min_len, name.max_len) == (2, 2)  # "00".."39" after "USER name"
    # "33" also occurs in "331 ...": the link is stated where every sample agrees.
    assert [(k.where, k.support) for k in t.links] == [("start:30", 1.0)]
    assert regex(t.pattern).fullmatch(b"USER name77\r\n") is not None
    assert len(port.states[t.target].labels) == 1 and port.states[t.target].default.count == 40


def test_a_parameter_that_decides_the_answer_stays_a_transition_of_its_own():
    pages = {b"/index.html": b"200 OK page", b"/about.html": b"200 OK about", b"/admin/": b"401 Unauthorized, go away",
             b"/secret/": b"401 Unauthorized, go away", b"/missing": b"404 Not Found here", b"/gone": b"404 Not Found here"}
    sessions = [session((b"GET " + path + b" HTTP/1.0\r\n\r\n", answer), port=80) for path, answer in pages.items()]
    with_split = only_port(sessions, macro=1.0, micro=0.9)
    without = only_port(sessions, macro=1.0, micro=0.9, answer_split=1.0)
    assert len(without.states[0].transitions) == 1  # one wildcard path: one answer for all
    answers = sorted(with_split.states[with_split.transitions[t].target].default.render()
                     for t in with_split.states[0].transitions)
    assert answers == [b"200 OK about", b"200 OK page", b"401 Unauthorized, go away", b"404 Not Found here"]


def test_a_client_speaking_before_the_banner_does_not_fold_it_into_the_answer():
    # Two clients waited for the banner; the third sent QUIT at once, so the banner and
    # the answer to QUIT came back as one answer.
    sessions = [session((b"QUIT\r\n", b"221 bye\r\n"), banner=BANNER) for _ in range(2)]
    sessions.append(session((b"QUIT\r\n", BANNER + b"221 bye\r\n")))
    port = only_port(sessions)
    root = port.states[port.root]
    assert root.default.parts == (BANNER,) and root.default.count == 3
    (t_id,) = root.transitions
    assert port.states[port.transitions[t_id].target].labels[0].parts == (b"221 bye\r\n",)


def test_a_banner_with_the_time_in_it_is_found_in_front_of_a_raced_answer_too():
    # Exim's banner says when it was sent, so no two sessions' banners are the same bytes;
    # nmap's TLS hello, sent at once, got the banner and the answer to it as one answer.
    def banner(second: int) -> bytes:
        return b"220 mail01 ESMTP Exim 4.96 Sun, 22 Nov 2026 11:41:%02d +0000\r\n" % second

    sessions = [session((b"QUIT\r\n", b"221 bye\r\n"), banner=banner(s)) for s in (3, 17, 42)]
    sessions.append(session((b"\x16\x03\x00\x00i\x01", banner(58) + b"501 NUL characters are not allowed\r\n")))
    port = only_port(sessions)
    root = port.states[port.root]
    assert all(label.render().startswith(b"220 mail01 ESMTP") for label in root.labels)
    assert sum(label.count for label in root.labels) == 4
    answers = sorted(port.states[port.transitions[t].target].default.render() for t in root.transitions)
    assert answers == [b"221 bye\r\n", b"501 NUL characters are not allowed\r\n"]


def test_an_answer_unlike_the_banner_is_not_cut():
    # A first answer as long as the banner, but other words: the client's own answer.
    sessions = [session((b"QUIT\r\n", b"221 bye\r\n"), banner=BANNER) for _ in range(2)]
    sessions.append(session((b"HELP\r\n", b"214 helps\r\n")))
    port = only_port(sessions)
    root = port.states[port.root]
    answers = sorted(port.states[port.transitions[t].target].default.render() for t in root.transitions)
    assert answers == [b"214 helps\r\n", b"221 bye\r\n"]


def _page(status: bytes, date: bytes, body: bytes) -> bytes:
    headers = (b"HTTP/1.1 " + status + b"\r\nServer: nginx/1.22.1\r\nDate: Sun, " + date + b" Nov 2026 18:39:45 GMT\r\n"
               b"Content-Type: text/html\r\nContent-Length: %d\r\nLast-Modified: Mon, 03 Jun 2024 12:00:00 GMT\r\n"
               b"Connection: keep-alive\r\nETag: \"665db040-%x\"\r\nAccept-Ranges: bytes\r\n\r\n" % (len(body), len(body)))
    return headers + body


def test_pages_that_differ_only_in_their_body_stay_apart_and_dates_do_not_split():
    # Long text answers: the head alone is the same headers; the bodies tell the pages apart,
    # and the dates and lengths (digits) are no decision of the server's.
    filler = b"<p>" + b"x" * 300 + b"</p>"
    pages = {b"/index.html": b"<html><title>Portal</title>" + filler + b"Welcome</html>\n",
             b"/about.html": b"<html><title>About us</title>" + filler + b"About</html>\n"}
    turns = [(b"/index.html", b"200 OK", b"22", pages[b"/index.html"]),
             (b"/about.html", b"200 OK", b"23", pages[b"/about.html"]),
             (b"/nothing.php", b"404 Not Found", b"22", b"<html>not found</html>\n"),
             (b"/old/gone.zip", b"404 Not Found", b"24", b"<html>not found</html>\n")]
    sessions = [session((b"GET " + path + b" HTTP/1.1\r\nHost: www\r\n\r\n", _page(status, date, body)), port=80)
                for path, status, date, body in turns]
    port = only_port(sessions, macro=1.0, micro=0.9, rules=())
    answers = [port.states[port.transitions[t].target].default.render() for t in port.states[0].transitions]
    ends = sorted(next(e for e in (b"Welcome", b"About", b"not found") if a.endswith(e + b"</html>\n")) for a in answers)
    assert ends == [b"About", b"Welcome", b"not found"]


def test_a_name_the_server_echoes_stays_a_parameter_however_many_clients_share_one():
    # Six clients say HELO alpha, one gizmo; the answer repeats the name. Splitting alpha
    # off (it is frequent) would leave gizmo a literal and a name never seen unlinked.
    names = [b"alpha"] * 6 + [b"gizmo"]
    sessions = [session((b"HELO " + n + b"\r\n", b"250 mail01 Hello " + n + b" [10.0.0.1]\r\n"), banner=BANNER)
                for n in names]
    port = only_port(sessions)
    (t_id,) = port.states[port.root].transitions
    t = port.transitions[t_id]
    (link,) = t.links
    m = regex(t.pattern).fullmatch(b"HELO delta\r\n")
    assert m is not None
    assert port.states[t.target].default.render({link.region: m.group(1)}) == b"250 mail01 Hello delta [10.0.0.1]\r\n"


def test_a_letter_two_values_share_by_chance_is_not_fixed_between_them():
    # nonexistent.php and old/backup.zip align on an "o" and a "." inside the name: one
    # byte between two mutating runs is chance, not structure, and is not fixed (it was,
    # once re-examined alone, and every missing path without an "o" missed the 404).
    sessions = [session((b"GET /" + path + b" HTTP/1.1\r\n\r\n", b"404 Not Found\r\n"), port=80)
                for path in (b"nonexistent.php", b"old/backup.zip")]
    port = only_port(sessions, macro=1.0, micro=0.9)
    (t_id,) = port.states[0].transitions
    pattern = port.transitions[t_id].pattern
    assert [r.value for r in pattern if r.fixed] == [b"GET /", b"p HTTP/1.1\r\n\r\n"]
    assert regex(pattern).fullmatch(b"GET /cgi-bin/status.php HTTP/1.1\r\n\r\n")


def test_a_udp_port_the_machine_refused_is_not_learned_one_that_stayed_silent_is():
    # A UDP scan: port 161 refused every probe (ICMP port unreachable), 514 took its datagrams
    # and said nothing (a syslog daemon, or a firewall), 53 answered.
    refused = session((b"\x30\x26probe", b""), port=161, transport=Transport.UDP, closed_by=Sender.SERVER)
    refused.close = "refused"
    silent = session((b"<13>hello", b""), port=514, transport=Transport.UDP, closed_by=None)
    dns = session((b"\x12\x34query", b"\x12\x34answer"), port=53, transport=Transport.UDP, closed_by=None)
    model = learn([refused, silent, dns], LearnParams(jobs=1))
    assert [(p.transport, p.port) for p in model.ports] == [("udp", 53), ("udp", 514)]


def test_a_port_that_accepted_connections_nobody_spoke_on_is_learned_open_and_silent():
    # A SYN scan found 3306 open (nobody spoke to it) and 3307 closed; on 21 a scan's
    # accepted connection sits beside a real session.
    def scanned(port: int, accepted: bool) -> Session:
        s = session(port=port, closed_by=Sender.CLIENT if accepted else Sender.SERVER)
        s.accepted, s.close = accepted, "rst"
        return s

    talking = session((b"USER a\r\n", b"331 ok\r\n"), banner=b"220 hi\r\n", port=21)
    talking.accepted = True
    model = learn([scanned(3306, True), scanned(3307, False), scanned(21, True), talking], LearnParams(jobs=1))
    ports = {(p.transport, p.port): p for p in model.ports}
    assert sorted(ports) == [("tcp", 21), ("tcp", 3306)]
    assert not ports["tcp", 3306].transitions and ports["tcp", 3306].stats["sessions"] == 1
    assert ports["tcp", 21].stats["sessions"] == 1  # the scan's empty connection is not a session of 21's
