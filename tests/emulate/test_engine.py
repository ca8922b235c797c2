"""The emulator core on models learned from hand-made sessions; every scenario runs twice:
whole messages, and trickled one byte at a time."""

from __future__ import annotations

import ast
import difflib
import random
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import scriptgen.emulate
from scriptgen.emulate import Emulator, EmulatorParams, Machine, NeedData, Send
from scriptgen.emulate.engine import _CONTEXT_BYTES, _byte_counts, _shared_bytes
from scriptgen.learn import learn
from scriptgen.model import BEFORE_BYTES, Sender, Transport
from scriptgen.modelfile import port_doc
from scriptgen.params import LearnParams

from tests.emulate.script import run
from tests.learn.sessions import session

BANNER = b"220 ready\r\n"


def machine(sessions, params=None, **kw) -> Machine:
    (port,) = learn(sessions, LearnParams(jobs=1, **kw)).ports
    return Machine(port_doc(port), params)


def ftp_sessions():
    users = [session((b"USER " + n + b"\r\n", b"331 Password required for " + n + b".\r\n"),
                     (b"PASS secret\r\n", b"230 Logged in.\r\n"), (b"QUIT\r\n", b"221 Bye.\r\n"),
                     banner=BANNER, closed_by=Sender.SERVER) for n in (b"alice", b"bob", b"carol")]
    users.append(session((b"SYST\r\n", b"215 UNIX Type: L8\r\n"), (b"QUIT\r\n", b"221 Bye.\r\n"),
                         banner=BANNER, closed_by=Sender.SERVER))
    return users


def ftp():
    return machine(ftp_sessions())


def nearest_answer(sessions, request: bytes, trickle: bool = False) -> bytes:
    """The answer to `request`, one request of its own, taken as nearest (asserted) by a
    model of `sessions` in which every request is its own transition."""
    out = run(machine(sessions, macro=0.0), [request], trickle=trickle)
    assert out.unmatched == ["nearest"]
    return out.answers[1]


TRICKLE = pytest.mark.parametrize("trickle", [False, True], ids=["whole", "trickled"])


@TRICKLE
def test_banner_then_answers_with_a_dependency_and_close_where_the_server_closed(trickle):
    t = run(ftp(), [b"USER dave\r\n", b"PASS x\r\n", b"QUIT\r\n"], trickle=trickle)
    assert t.answers == [BANNER, b"331 Password required for dave.\r\n", b"230 Logged in.\r\n", b"221 Bye.\r\n"]
    # "PASS x" is not the "PASS secret" of every training session: the nearest transition.
    assert t.closed == "server" and t.unmatched == ["nearest"]


@TRICKLE
def test_literal_transition_beats_a_wildcard(trickle):
    t = run(ftp(), [b"SYST\r\n"], trickle=trickle)
    assert t.answers[1] == b"215 UNIX Type: L8\r\n"


@TRICKLE
def test_unmatched_input_takes_the_nearest_transition_above_the_floor(trickle):
    t = run(ftp(), [b"SYST foo\r\n"], trickle=trickle)
    assert t.unmatched == ["nearest"] and t.answers[1] == b"215 UNIX Type: L8\r\n"


@TRICKLE
def test_an_unknown_command_is_not_taken_for_a_goodbye(trickle):
    # After SYST the capture only ever saw QUIT, answered by closing. CDUP is as similar
    # to it as the floor asks, but another command: the connection stays open.
    t = run(ftp(), [b"SYST\r\n", b"CDUP\r\n", b"QUIT\r\n"], trickle=trickle)
    assert t.answers[2] != b"221 Bye.\r\n" and t.unmatched[0] in ("nearest", "silence")
    assert t.answers[3] == b"221 Bye.\r\n" and t.closed == "server"


@TRICKLE
def test_text_like_nothing_learned_is_answered_rather_than_met_with_silence(trickle):
    # HELP is about a third like every request learned (below the nearest floor): a text
    # protocol's server answers every command, so its most similar sample answers.
    t = run(ftp(), [b"HELP\r\n"], trickle=trickle)
    assert t.unmatched == ["nearest"] and t.answers[1] != b"" and t.closed is None
    # Several lines too: an HTTP/1.0 request without headers, a third like curl's.
    pages = [session((b"GET /" + p + b" HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: curl/8.0\r\n"
                      b"Accept: */*\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n" + p[:2]), port=80)
             for p in (b"index.html", b"about.html", b"news.html")]
    # (What every GET learned got, its body the path's first bytes: the usual answer.)
    t = run(machine(pages), [b"GET / HTTP/1.0\r\n\r\n"], trickle=trickle)
    assert t.unmatched == ["common"] and t.answers[1].startswith(b"HTTP/1.1 200 OK")
    # Bytes like nothing learned still meet silence (a TLS hello to a web server).
    t = run(machine(pages), [b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03"], trickle=trickle)
    assert t.unmatched == ["silence"] and t.answers == [b"", b""]


@TRICKLE
def test_a_binary_request_like_nothing_learned_but_half_like_one_is_answered_as_it(trickle):
    # nmap's SMB write of 900 bytes to a pipe: its header is that of the writes learned,
    # its data is not, and it is less than half like any. The server answered it, as it
    # answered them; random bytes of its length still meet silence.
    rng = random.Random(7)

    def blob(n: int) -> bytes:
        return bytes(rng.randrange(256) for _ in range(n))
    header = b"\xffSMB/\x00\x00\x00\x00\x18\x07\xc8"
    written = b"\x00\x00\x00\x2f\xffSMB/\x00\x00\x00\x00\x98\x07\xc8\x06\x00"
    m = machine([session((b"\x00\x00\x00\x40" + header + blob(16) + b"\x00" * 40 + blob(8), written), port=445)
                 for _ in range(3)])
    request = b"\x00\x00\x00\xb4" + header + blob(16) + b"\x00" * 40 + blob(120)
    t = run(m, [request], trickle=trickle)
    assert t.unmatched == ["nearest"] and t.answers[1] == written
    t = run(m, [blob(len(request))], trickle=trickle)
    assert t.unmatched == ["silence"] and t.answers == [b"", b""]
    # As half like, but not of the writes' kind (its first byte, the message type, differs):
    # that much in common is chance.
    t = run(m, [b"\x85" + request[1:]], trickle=trickle)
    assert t.unmatched == ["silence"] and t.answers == [b"", b""]


@TRICKLE
def test_unmatched_garbage_is_met_with_silence_and_the_state_is_kept(trickle):
    t = run(ftp(), [b"\x00\x01\x02\xff" * 10 + b"\n", b"SYST\r\n"], trickle=trickle)
    assert t.unmatched == ["silence"]
    assert t.answers[1:] == [b"", b"215 UNIX Type: L8\r\n"]
    # A server of lines (every FTP request ends with CRLF) waits for the end of a line, as
    # vsftpd does: bytes without one are the start of the next request's line.
    t = run(ftp(), [b"\x00\x01\x02\xff" * 10, b"SYST\r\n"], trickle=trickle)
    assert t.answers[1:] == [b"", b""] and t.unmatched == ["silence"]


def test_request_without_terminator_completes_after_the_match_gap():
    sessions = [session((b"\x01\x02" + bytes([i]), b"\x81" + bytes([i])), port=9000) for i in range(0, 250, 25)]
    m = machine(sessions, macro=1.0, micro=1.0)  # one transition ending in a mutating byte
    conn = Emulator(m, 0.0)
    assert conn.next_event(0.0) == NeedData(None)  # the client speaks first: no banner
    conn.receive_data(b"\x01\x02\x03", 1.0)
    event = conn.next_event(1.0)
    assert isinstance(event, NeedData) and event.wake_at == pytest.approx(1.0 + m.params.match_gap)
    conn.receive_data(b"\x04", 1.01)  # a byte more: it matches nothing now, so the wait is longer
    assert conn.next_event(1.03) == NeedData(pytest.approx(1.01 + m.params.idle_gap))
    assert conn.next_event(1.01 + m.params.idle_gap).__class__.__name__ in ("Unmatched", "Input")

    conn = Emulator(m, 0.0)
    conn.receive_data(b"\x01\x02\x03", 1.0)
    assert conn.next_event(1.0 + m.params.match_gap).__class__.__name__ == "Input"
    sent = conn.next_event(1.1)
    assert isinstance(sent, Send) and sent.data[:1] == b"\x81"


def test_eof_completes_a_pending_request_then_closes():
    sessions = [session((b"\x01\x02" + bytes([i]), b"\x81" + bytes([i])), port=9000) for i in range(0, 250, 25)]
    conn = Emulator(machine(sessions, macro=1.0, micro=1.0), 0.0)
    conn.receive_data(b"\x01\x02\x07", 1.0)
    conn.receive_data(b"", 1.0)
    assert [type(conn.next_event(1.0)).__name__ for _ in range(3)] == ["Input", "Send", "Close"]


def test_pacing_holds_answers_for_the_learned_delay():
    m = machine([session((b"PING\r\n", b"PONG\r\n")) for _ in range(3)], EmulatorParams(pace=True))
    conn = Emulator(m, 0.0)
    conn.receive_data(b"PING\r\n", 5.0)
    assert conn.next_event(5.0).__class__.__name__ == "Input"
    assert conn.next_event(5.0) == NeedData(5.002)
    assert isinstance(conn.next_event(5.002), Send)


def test_udp_datagrams_are_requests_without_waiting():
    from scriptgen.model import Transport

    sessions = [session((b"Q" + bytes([i]) * 4, b"A" + bytes([i]) * 4), port=53, transport=Transport.UDP) for i in range(4)]
    m = machine(sessions, macro=0.0, micro=0.0)
    conn = Emulator(m, 0.0)
    conn.receive_data(b"Q\x02\x02\x02\x02", 0.0)
    assert [type(conn.next_event(0.0)).__name__ for _ in range(2)] == ["Input", "Send"]


def test_oversized_input_is_bounded():
    m = ftp()
    conn = Emulator(m, 0.0)
    while not isinstance(conn.next_event(0.0), NeedData):
        pass
    for i in range(300):
        conn.receive_data(b"A" * 4096, 0.0)  # 1.2 MB without a terminator
    assert len(conn._buffer) < m.params.max_request_bytes  # taken as requests, not hoarded


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=300))
def test_the_nearest_searchs_byte_bound_is_difflibs_quick_ratio(a, b):
    # The search rules candidates out by this bound before the full ratio: a bound lower
    # than difflib's would drop a candidate the ratio would have chosen.
    ours = [0] * 256
    for value in a:
        ours[value] += 1
    size = len(a) + len(b)
    bound = 2.0 * _shared_bytes(ours, _byte_counts(b)) / size if size else 1.0
    assert bound == difflib.SequenceMatcher(None, a, b, autojunk=False).quick_ratio()


def test_a_request_like_hundreds_of_samples_costs_a_bounded_number_of_ratios(monkeypatch):
    # Samples of one layout and the same few byte values (SMB's: mostly zeros), all about as
    # like the request: their byte counts rule none out, and difflib takes a millisecond a
    # pair. A peer's request works out at most _MAX_RATIOS candidates a search (each its
    # ratio, and its first line's), the most promising first.
    import scriptgen.emulate.engine as engine

    rng = random.Random(3)

    def message() -> bytes:  # of several lengths: one length is compared place by place, at no cost
        return b"\xfeSMB" + bytes(rng.choice(b"\x00\x00\x01\x02") for _ in range(rng.randint(140, 160)))

    sessions = [session((message(), b"answer %d" % k), port=445) for k in range(100)]
    m = machine(sessions, macro=0.0)
    hostile = message()
    ratios = 0
    real = difflib.SequenceMatcher.ratio

    def counted(self):
        nonlocal ratios
        ratios += 1
        return real(self)

    monkeypatch.setattr(difflib.SequenceMatcher, "ratio", counted)
    t = run(m, [hostile])
    assert t.answers[1].startswith(b"answer ") and t.unmatched == ["nearest"]
    cap = engine._MAX_RATIOS
    assert 0 < ratios <= 2 * cap
    ratios = 0
    monkeypatch.setattr(engine, "_MAX_RATIOS", 10**6)
    run(m, [hostile])
    assert ratios > 4 * cap  # without it, many more


def test_the_emulator_compares_as_much_of_the_request_before_as_the_model_keeps():
    # Its own copy of scriptgen.model.BEFORE_BYTES (it imports nothing): the two must agree.
    assert _CONTEXT_BYTES == BEFORE_BYTES


def test_emulate_imports_only_the_standard_library_and_itself():
    root = Path(scriptgen.emulate.__file__).parent
    stdlib = set(sys.stdlib_module_names)
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                assert top in stdlib or name.startswith("scriptgen.emulate"), f"{path.name} imports {name}"


@TRICKLE
def test_a_request_learned_in_another_state_is_answered_from_there(trickle):
    # SYST was only ever sent right after the banner; here it comes after USER/PASS.
    t = run(ftp(), [b"USER dave\r\n", b"PASS secret\r\n", b"SYST\r\n"], trickle=trickle)
    assert t.answers[3] == b"215 UNIX Type: L8\r\n"
    assert t.unmatched == ["elsewhere"]


def test_pipelined_requests_are_split_and_answered_in_order():
    t = run(ftp(), [b"USER dave\r\nPASS secret\r\nQUIT\r\n"])
    assert t.answers == [BANNER, b"331 Password required for dave.\r\n230 Logged in.\r\n221 Bye.\r\n"]
    assert t.closed == "server"


@TRICKLE
def test_a_pipelined_request_learned_in_another_state_is_answered_without_waiting(trickle):
    # RESP has no terminator to cut at: after PING, the GET learned only first in a
    # session is complete because those very bytes are a request the model knows; the
    # answer comes within the 0.3 s a client (and the evaluator) waits, not after idle_gap.
    sessions = [session((b"*1\r\n$4\r\nPING\r\n", b"+PONG\r\n"), port=6379),
                session((b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", b"$1\r\nv\r\n"), port=6379)]
    m = machine(sessions)
    assert m.terminator == b""
    t = run(m, [b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"], trickle=trickle, gap=0.3)
    assert t.answers[1] == b"+PONG\r\n$1\r\nv\r\n" and t.unmatched == ["elsewhere"]


def test_pipelined_unknown_lines_are_cut_at_the_models_terminator():
    t = run(ftp(), [b"ZZZZZZZZ1\r\nZZZZZZZZ2\r\nSYST\r\n"])  # lines less than last_floor like any learned
    assert t.answers[1] == b"215 UNIX Type: L8\r\n" and t.unmatched == ["silence", "silence"]


def test_a_clients_pipeline_and_a_netcat_line_do_not_hide_the_models_terminator():
    # One client sent its commands at once (CRLFs inside one request); one typed `\r\n`
    # as backslashes into netcat (no CRLF at all). Lines are still cut at CRLF: before,
    # the unknown line and QUIT waited idle_gap and were answered as one request.
    sessions = ftp_sessions() + [
        session((b"USER bob\r\nPASS secret\r\nQUIT\r\n", b"331 Password required for bob.\r\n230 Logged in.\r\n221 Bye.\r\n"),
                banner=BANNER, closed_by=Sender.SERVER),
        session((b"USER carol\\r\\nQUIT\\r\\n", b"530 Please login with USER and PASS.\r\n"), banner=BANNER)]
    m = machine(sessions)
    assert m.terminator == b"\n"  # the shortest of what every request ends with, and none holds inside
    t = run(m, [b"ZZZZZZZZ1\r\nQUIT\r\n"], gap=0.3)
    assert t.answers[1] == b"221 Bye.\r\n" and t.unmatched == ["silence", "elsewhere"] and t.closed == "server"
    # A request of several lines that is not commands sent at once (memcached's `set` and
    # its data) keeps a model from cutting at CRLF: it would shred such requests.
    stores = [session((b"set k" + n + b" 0 0 5\r\nhello\r\n", b"STORED\r\n"), port=11211) for n in (b"1", b"2", b"3")]
    stores.append(session((b"get k1\r\n", b"VALUE k1 0 5\r\nhello\r\nEND\r\n"), port=11211))
    assert machine(stores).terminator == b""


def http_answer(status: bytes, body: bytes) -> bytes:
    return b"HTTP/1.1 %s\r\nServer: nginx\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body)


@TRICKLE
def test_a_request_line_never_heard_of_gets_the_answer_usual_for_its_command(trickle):
    # curl fetched pages (200s, headers in one order); nmap probed for pages that are not
    # there (404s) and tried methods the server does not allow (405s), headers in another.
    curl = b" HTTP/1.1\r\nHost: www01\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n"
    nmap = b" HTTP/1.1\r\nConnection: close\r\nUser-Agent: Mozilla/5.0 (compatible; Nmap Scripting Engine)\r\n\r\n"
    missing, refused = http_answer(b"404 Not Found", b"not found"), http_answer(b"405 Not Allowed", b"not allowed")
    turns = [(b"GET /" + page + curl, http_answer(b"200 OK", body))
             for page, body in ((b"", b"Welcome"), (b"about.html", b"About us"), (b"robots.txt", b"Disallow: /"))]
    turns += [(b"GET /" + probe + nmap, missing) for probe in (b"nmaplowercheck1", b"HNAP1", b".git/HEAD")]
    turns += [(method + b" /" + nmap, refused) for method in (b"KNHN", b"OHDG", b"PROPFIND")]
    m = machine([session(turn, port=80) for turn in turns])
    # A page never heard of, with curl's headers (nearest, byte for byte, to curl's 200s):
    t = run(m, [b"GET /evox/about" + curl], trickle=trickle)
    assert t.answers[1] == missing and t.unmatched == ["common"]
    # A method never heard of: what most methods got.
    t = run(m, [b"QWER /" + curl], trickle=trickle)
    assert t.answers[1] == refused and t.unmatched == ["common"]
    # A line that names a page learned is nearest to it: nginx ignores the query.
    t = run(m, [b"GET /about.html?ref=scan" + curl], trickle=trickle)
    assert t.answers[1] == http_answer(b"200 OK", b"About us")


@TRICKLE
def test_the_usual_answer_is_given_as_the_most_alike_sample_and_repeats_no_header(trickle):
    # nginx closed after nmap's 404s (`Connection: close`) and kept curl's connection open
    # after its own 404: a page never heard of, asked by curl, gets curl's.
    curl = b" HTTP/1.1\r\nHost: www01\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n"
    nmap = b" HTTP/1.1\r\nConnection: close\r\nUser-Agent: Mozilla/5.0 (compatible; Nmap)\r\n"

    def missing(connection: bytes) -> bytes:
        body = b"<html>not found</html>"
        return (b"HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: %d\r\nConnection: %s\r\n\r\n%s"
                % (len(body), connection, body))

    def probes(headers: bytes) -> list:
        return [session((b"GET /" + probe + headers, missing(b"close")), port=80)
                for probe in (b"nmaplowercheck1", b"HNAP1", b".git/HEAD")]
    curls = [session((b"GET /missing.html" + curl, missing(b"keep-alive")), port=80)]
    # (Its `html` is not /missing.html's, made `cgi`: the 404s to nmap's probes hold it too.)
    t = run(machine(probes(nmap + b"\r\n") + curls), [b"GET /cgi-bin/status.cgi" + curl], trickle=trickle)
    assert t.unmatched == ["common"] and t.answers[1] == missing(b"keep-alive") and t.closed is None
    # Answered as a probe sent with `Accept: text/html` was, curl's `Accept: */*` does not
    # stand in for its `html` (nginx's page became `<*>`, shorter than its length said).
    t = run(machine(probes(nmap + b"Accept: text/html\r\n\r\n")), [b"GET /cgi-bin/status.cgi" + curl], trickle=trickle)
    assert t.unmatched == ["common"] and t.answers[1] == missing(b"close")


def test_an_unknown_command_repeats_its_argument_though_another_answer_holds_the_word():
    # redis-cli's `NOSUCHCOMMAND arg` was learned; `COMMAND DOCS` answered with `arg` among
    # its words. Another unknown command's argument still stands in the place of `'arg'`.
    def resp(*words: bytes) -> bytes:
        return b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)
    unknown = b"-ERR unknown command '%s', with args beginning with: '%s' \r\n"
    sessions = [session((resp(b"COMMAND", b"DOCS"), b"*2\r\n$3\r\nget\r\n$3\r\narg\r\n"), port=6379),
                session((resp(b"NOSUCHCOMMAND", b"arg"), unknown % (b"NOSUCHCOMMAND", b"arg")), port=6379)]
    out = run(machine(sessions, macro=0.0), [resp(b"FLUSHEVERYTHING", b"now")])
    assert out.answers[1] == unknown % (b"FLUSHEVERYTHING", b"now")


@TRICKLE
def test_a_server_of_lines_answers_each_line_of_binary_bytes_as_an_unknown_command(trickle):
    # vsftpd read nmap's TLS hello as lines: one `530 Please login` per LF byte in it, at
    # once, and nothing for the bytes after the last LF; it still wanted a login after.
    login = b"530 Please login with USER and PASS.\r\n"
    sessions = [session((b"USER " + n + b"\r\n", b"331 Please specify the password.\r\n"), banner=BANNER)
                for n in (b"alice", b"bob")]
    sessions += [session((c + b"\r\n", login), banner=BANNER) for c in (b"SYST", b"PWD", b"LIST")]
    m = machine(sessions)
    hello = b"\x16\x03\x01\x00\xa5\x01\x00\n\x00\x13\x009\x00\xff\n\x00\x04\x00\x17"
    t = run(m, [hello, b"USER carol\r\n"], trickle=trickle, gap=0.3)
    assert t.answers[1] == login * 2 and t.unmatched[:2] == ["common", "common"]
    assert t.answers[2] == b"331 Please specify the password.\r\n"


def test_a_request_answered_by_its_nearest_transition_gets_its_own_name_repeated():
    # Each name was seen once: no link can be learned, but the nearest transition's answer
    # repeats its sample's name, and the name at hand takes its place.
    sessions = [session((b"EHLO client01.example.org\r\n", b"250-mail01 Hello client01.example.org [10.0.0.1]\r\n250 SIZE\r\n"),
                        banner=BANNER),
                session((b"*2\r\n$4\r\nECHO\r\n$11\r\nhello there\r\n", b"$11\r\nhello there\r\n"), banner=BANNER),
                session((b"QUIT\r\n", b"221 bye\r\n"), banner=BANNER)]
    m = machine(sessions, macro=0.0)
    out = run(m, [b"EHLO client02.example.net\r\n"])
    assert out.unmatched == ["nearest"]
    assert out.answers[1] == b"250-mail01 Hello client02.example.net [10.0.0.1]\r\n250 SIZE\r\n"
    out = run(m, [b"*2\r\n$4\r\nECHO\r\n$15\r\nis anybody home\r\n"])
    assert out.answers[1] == b"$15\r\nis anybody home\r\n"
    assert run(m, [b"QUIT\r\n"]).answers[1] == b"221 bye\r\n"  # an exact match is answered as learned


def _resp(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


@TRICKLE
def test_an_answer_that_repeats_the_request_before_repeats_the_sessions_own(trickle):
    # redis-cli's SET then GET of a key the capture never had: the GET's answer is the value
    # the SET before it gave, with its length.
    m = machine([session((_resp(b"PING"), b"+PONG\r\n"), port=6379),
                 session((_resp(b"GET", b"app:name"), b"$11\r\ncorpus-shop\r\n"), port=6379),
                 session((_resp(b"SET", b"tmp:epsilon", b"five"), b"+OK\r\n"),
                         (_resp(b"GET", b"tmp:epsilon"), b"$4\r\nfive\r\n"), port=6379)])
    out = run(m, [_resp(b"SET", b"tmp:zeta", b"sixty-six"), _resp(b"GET", b"tmp:zeta")], trickle=trickle)
    assert out.answers[1:] == [b"+OK\r\n", b"$9\r\nsixty-six\r\n"]
    assert run(m, [_resp(b"GET", b"app:name")], trickle=trickle).answers[1] == b"$11\r\ncorpus-shop\r\n"


def test_a_piece_shared_by_the_ends_of_two_words_is_not_an_echo():
    # "+PONG\r\n" and "PING\r\n" share "NG\r\n": an unknown command nearest to PING got
    # "+POZE\r\n" (DBSIZE's end put in its place).
    sessions = [session((b"*1\r\n$4\r\nPING\r\n", b"+PONG\r\n"), port=6379),
                session((b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", b"$1\r\nv\r\n"), port=6379)]
    assert nearest_answer(sessions, b"*1\r\n$6\r\nDBSIZE\r\n") == b"+PONG\r\n"


def test_an_unknown_command_near_another_gets_its_own_name_and_argument_repeated():
    # Half similar (0.56) to the one unknown command of the capture; its three-letter
    # argument is in the answer twice, once inside "args", which stays.
    sessions = [session((b"*2\r\n$13\r\nNOSUCHCOMMAND\r\n$3\r\narg\r\n",
                         b"-ERR unknown command 'NOSUCHCOMMAND', with args beginning with: 'arg' \r\n"), port=6379),
                session((b"*1\r\n$4\r\nPING\r\n", b"+PONG\r\n"), port=6379)]
    answer = nearest_answer(sessions, b"*2\r\n$15\r\nFLUSHEVERYTHING\r\n$3\r\nnow\r\n")
    assert answer == b"-ERR unknown command 'FLUSHEVERYTHING', with args beginning with: 'now' \r\n"


def test_line_ends_and_punctuation_are_not_echoed_as_a_value():
    # Redis inline commands, pipelined, near a pipelined RESP sample: the "\r\n$" the sample
    # and its answer share is syntax. Replaced by the request's "\r\nQUIT" it made the
    # answer "+PONG\r\nQUIT11\r\n...", which no Redis client can read.
    sessions = [session((b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$8\r\napp:name\r\n", b"+PONG\r\n$11\r\ncorpus-shop\r\n"),
                        port=6379)]
    t = run(machine(sessions), [b"PING\r\nINFO keyspace\r\nQUIT\r\n"])
    assert t.unmatched == ["nearest"] and t.answers[1] == b"+PONG\r\n$11\r\ncorpus-shop\r\n"


@TRICKLE
def test_of_the_requests_with_its_line_learned_elsewhere_the_most_like_it_answers(trickle):
    # nmap asked for /robots.txt twice with `Connection: close` (the server closed); curl,
    # after `GET /`, kept alive. wget's, after `GET /files/` where nobody asked for it, is
    # like curl's: answered as curl's was, the connection left open.
    def get(path, agent, extra=b"Accept: */*\r\n"):
        return b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: " + agent + b"\r\n" + extra + b"\r\n"

    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nDisallow: /admin/\n"
    kept = b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\nDisallow: /admin/\n"
    nmap = [session((get(b"/robots.txt", b"Mozilla/5.0 (compatible; Nmap)", b"Connection: close\r\n"), closing),
                    port=80, closed_by=Sender.SERVER) for _ in range(2)]
    curl = session((get(b"/", b"curl/7.88.1"), b"HTTP/1.1 200 OK\r\n\r\n<h1>home</h1>"),
                   (get(b"/robots.txt", b"curl/7.88.1"), kept), port=80)
    wget = session((get(b"/files/", b"Wget/1.21.3"), b"HTTP/1.1 200 OK\r\n\r\n<pre>prices.csv</pre>"), port=80)
    request = get(b"/robots.txt", b"Wget/1.21.3", b"Accept: */*\r\nConnection: Keep-Alive\r\n")
    t = run(machine([*nmap, curl, wget], macro=0.0), [get(b"/files/", b"Wget/1.21.3"), request], trickle=trickle)
    assert t.answers[2] == kept and t.unmatched == ["elsewhere"] and t.closed is None


def test_binary_requests_of_one_length_are_compared_place_by_place():
    # dig's MX and TXT queries for one name: one type byte apart, with a random id (the
    # first two bytes) and a random cookie (the last eight). Aligned, the fresh MX query's
    # id b8b9 shared a byte with the TXT query's b90f and came nearer it; field by field,
    # it is the MX query.
    mx = bytes.fromhex("263c0120000100000000000106636f72707573047465737400000f000100002904d000000000000c000a00089b3021747a40f24c")
    txt = bytes.fromhex("b90f0120000100000000000106636f727075730474657374000010000100002904d000000000000c000a0008018deedead05d116")
    fresh = bytes.fromhex("b8b90120000100000000000106636f72707573047465737400000f000100002904d000000000000c000a000835af570a9d9aad15")
    sessions = [session((mx, b"10 mail01.corpus.test."), port=53, transport=Transport.UDP),
                session((txt, b"v=spf1 mx -all"), port=53, transport=Transport.UDP)]
    assert nearest_answer(sessions, fresh) == b"10 mail01.corpus.test."


def test_a_repeated_piece_the_request_still_holds_elsewhere_is_left_as_learned():
    # The headers came in another order: "Connection: close" moved, it did not change.
    sessions = [session((b"HEAD / HTTP/1.1\r\nConnection: close\r\nUser-Agent: scanner/1.0\r\n\r\n",
                         b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"), port=80),
                session((b"QUIT\r\n", b"221 bye\r\n"), port=80)]
    request = b"HEAD / HTTP/1.1\r\nUser-Agent: scanner/2.0\r\nConnection: close\r\n\r\n"
    assert nearest_answer(sessions, request) == b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"


@TRICKLE
def test_a_request_line_learned_in_another_state_is_answered_from_there(trickle):
    # wget fetched /files/ then /files/prices.csv on one connection; curl fetched pages one
    # per connection. curl's GET /files/prices.csv is more like curl's GET /files/ (same
    # headers) than like wget's request, but only wget's had its request line.
    def get(path, agent):
        return b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: " + agent + b"\r\nAccept: */*\r\n\r\n"

    listing, prices = b"HTTP/1.1 200 OK\r\n\r\n<pre>prices.csv</pre>", b"HTTP/1.1 200 OK\r\n\r\nwidget,10\n"
    sessions = [session((get(b"/files/", b"Wget/1.21.3"), listing), (get(b"/files/prices.csv", b"Wget/1.21.3"), prices),
                        port=80),
                session((get(b"/files/", b"curl/7.88.1"), listing), port=80),
                session((get(b"/", b"curl/7.88.1"), b"HTTP/1.1 200 OK\r\n\r\n<h1>home</h1>"), port=80)]
    t = run(machine(sessions, macro=0.0), [get(b"/files/prices.csv", b"curl/7.88.1")], trickle=trickle)
    assert t.answers[1] == prices and t.unmatched == ["elsewhere"]


@TRICKLE
def test_a_command_the_model_never_saw_gets_what_most_commands_of_its_state_got(trickle):
    # Before login vsftpd says "530 Please login" to every command but USER and FEAT; nmap's
    # GET / and an XMKD (not half like any request of the state) get it too, not the answer
    # of what is nearest in the model byte for byte.
    login = b"530 Please login with USER and PASS.\r\n"
    sessions = [session((b"SYST\r\n", login), banner=BANNER), session((b"HELP\r\n", login), banner=BANNER),
                session((b"PWD\r\n", login), banner=BANNER),
                session((b"USER anonymous\r\n", b"331 Please specify the password.\r\n"), banner=BANNER),
                session((b"FEAT\r\n", b"211 End\r\n"), banner=BANNER)]
    m = machine(sessions, macro=0.0)
    for request in (b"GET / HTTP/1.0\r\n", b"XMKD x\r\n"):
        t = run(m, [request], trickle=trickle)
        assert t.answers[1] == login and t.unmatched == ["common"], request
    # A command the model knows, or one half like a request of the state, is answered as
    # its nearest sample was (Redis's unknown command: nearest to the capture's own).
    t = run(m, [b"USER ftp\r\n", b"FEATS\r\n"], trickle=trickle)
    assert t.answers[1:] == [b"331 Please specify the password.\r\n", b"211 End\r\n"]
    assert t.unmatched == ["nearest", "nearest"]


def test_a_header_name_is_not_taken_for_the_value_that_stands_in_its_place():
    # curl's GET without a Connection header, and a HEAD with "Connection: close": word for
    # word, the sample's "Accept" stood where the request has "close", and nginx's
    # "Accept-Ranges" became "close-Ranges".
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nAccept-Ranges: bytes\r\n\r\nhello"
    sessions = [session((b"GET /about.html HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n\r\n", answer), port=80),
                session((b"QUIT\r\n", b"221 bye\r\n"), port=80)]
    request = b"HEAD /about.html HTTP/1.1\r\nHost: www01\r\nConnection: close\r\n\r\n"
    assert nearest_answer(sessions, request) == answer


def test_requests_answered_alike_that_lead_to_different_states_stay_apart():
    # Every USER gets 331; what the same PASS gets next tells the users apart. Merged,
    # "PASS right" was 230 for any user, and a brute force found every user "valid".
    def login(user, password, answer):
        return session((b"USER " + user + b"\r\n", b"331 Please specify the password.\r\n"),
                       (b"PASS " + password + b"\r\n", answer), (b"QUIT\r\n", b"221 Goodbye.\r\n"),
                       banner=BANNER, closed_by=Sender.SERVER)
    ok, no = b"230 Login successful.\r\n", b"530 Login incorrect.\r\n"
    sessions = [login(b"anonymous", b"ftp@example.com", ok), login(b"anonymous", b"guest@example.org", ok),
                login(b"anonymous", b"IEUser@", ok), login(b"alice", b"right", ok), login(b"alice", b"right", ok),
                login(b"alice", b"letmein", no), login(b"alice", b"admin", no), login(b"alice", b"123456", no),
                login(b"bob", b"right", no), login(b"bob", b"letmein", no),
                login(b"carol", b"right", no), login(b"carol", b"admin", no)]
    m = machine(sessions)
    assert run(m, [b"USER dave\r\n", b"PASS right\r\n"]).answers[2] == no
    assert run(m, [b"USER alice\r\n", b"PASS right\r\n"]).answers[2] == ok
    assert run(m, [b"USER alice\r\n", b"PASS hunter2\r\n"]).answers[2] == no
    assert run(m, [b"USER anonymous\r\n", b"PASS scanner@example.net\r\n"]).answers[2] == ok


def test_a_request_near_a_learned_pattern_gets_its_own_name_and_nothing_else_changes():
    # Two names learned as one pattern ending in "e.org", with a link; a third name does not
    # fit it. Answered as the sample was, with the sample's name replaced (the answer
    # holds "mail01" and the sample "client01": no piece of the host name may move).
    names = [b"vm"] * 5 + [b"client01.example.org", b"nmap.scanme.org"]
    sessions = [session((b"EHLO " + n + b"\r\n", b"250-mail01.e2e.test Hello " + n + b" [127.0.0.1]\r\n250 SIZE\r\n"),
                        banner=BANNER) for n in names]
    out = run(machine(sessions), [b"EHLO scanner.example.com\r\n"])
    assert out.answers[1] == b"250-mail01.e2e.test Hello scanner.example.com [127.0.0.1]\r\n250 SIZE\r\n"


def test_among_similar_samples_the_one_that_begins_as_the_request_does_answers():
    # Byte for byte the HEAD (headers in another order) is closer to the GET; its start
    # says it is a HEAD.
    ua = b"User-Agent: Mozilla/5.0 (compatible; Nmap Scripting Engine; https://nmap.org/book/nse.html)\r\n"
    sessions = [session((b"HEAD / HTTP/1.1\r\n" + ua + b"Connection: close\r\nHost: 127.0.0.1\r\n\r\n",
                         b"HTTP/1.1 200 OK\r\n\r\n"), port=80),
                session((b"GET /nmaplowercheck1 HTTP/1.1\r\nConnection: close\r\n" + ua + b"Host: 127.0.0.1\r\n\r\n",
                         b"HTTP/1.1 404 Not Found\r\n\r\n"), port=80)]
    request = b"HEAD / HTTP/1.1\r\nConnection: close\r\n" + ua + b"Host: 127.0.0.1\r\n\r\n"
    assert nearest_answer(sessions, request) == b"HTTP/1.1 200 OK\r\n\r\n"


def test_among_similar_samples_the_one_with_the_same_first_line_answers():
    # curl's request for a directory wget fetched, its headers curl's: byte for byte closer
    # to curl's request for a file in it. The first line says what is asked for.
    curl = b"Host: 127.0.0.1\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n"
    wget = (b"Host: 127.0.0.1\r\nUser-Agent: Wget/1.21.3\r\nAccept: */*\r\nAccept-Encoding: identity\r\n"
            b"Connection: Keep-Alive\r\n\r\n")
    listing, csv = b"HTTP/1.1 200 OK\r\n\r\nIndex of /files/", b"HTTP/1.1 200 OK\r\n\r\nprice list"
    sessions = [session((b"GET /files/ HTTP/1.1\r\n" + wget, listing), port=80),
                session((b"GET /files/prices.csv HTTP/1.1\r\n" + curl, csv), port=80)]
    assert nearest_answer(sessions, b"GET /files/ HTTP/1.1\r\n" + curl) == listing
    # A request of one line is its line: its start (the command) still decides.
    sessions = [session((b"SIZE notes.txt\r\n", b"213 21\r\n"), banner=BANNER),
                session((b"RETR plan.txt\r\n", b"150 Opening plan.txt\r\n"), banner=BANNER)]
    assert run(machine(sessions, macro=0.0), [b"SIZE plan.txt\r\n"]).answers[1] == b"213 21\r\n"



@TRICKLE
def test_a_sample_with_the_requests_first_line_beats_a_wildcard_match(trickle):
    # nmap's probes for missing pages, one header order, answered 404: a wildcard over the
    # path. Its favicon fetch came with its headers in another order. A favicon request in
    # the first order matches the wildcard, but the first line says what it asks for.
    ua = b"User-Agent: Mozilla/5.0 (compatible; Nmap Scripting Engine; https://nmap.org/book/nse.html)\r\n"
    missing, icon = b"HTTP/1.1 404 Not Found\r\n\r\nnot found", b"HTTP/1.1 200 OK\r\n\r\nGIF89a icon"
    sessions = [session((b"GET /" + p + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" + ua + b"\r\n",
                         missing), port=80) for p in (b"HNAP1", b"evox/about", b"nmaplowercheck1795347741")]
    sessions.append(session((b"GET /favicon.ico HTTP/1.1\r\nHost: 127.0.0.1\r\n" + ua + b"Connection: close\r\n\r\n",
                             icon), port=80))
    m = machine(sessions)
    asked = b"GET /favicon.ico HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" + ua + b"\r\n"
    assert any(t.literal is None and t.regex.fullmatch(asked) for t in m.transitions.values())  # the 404s' wildcard
    t = run(m, [asked], trickle=trickle)
    assert t.answers[1] == icon and t.unmatched == ["nearest"]
    # Another missing page still matches the wildcard, and is answered as the 404s were.
    t = run(m, [asked.replace(b"favicon.ico", b".git/HEAD")], trickle=trickle)
    assert t.answers[1] == missing and t.unmatched == []


@TRICKLE
def test_a_request_through_a_wildcard_gets_the_answer_its_sample_got(trickle):
    # FTP's SIZE of files, each its own size: one wildcard over the name, and a state with a
    # label per size. A file the capture asked for gets its own size, not the most frequent.
    def size(name: bytes, answer: bytes):
        return session((b"SIZE " + name + b"\r\n", b"213 " + answer + b"\r\n"), banner=BANNER)
    sessions = [size(b"notes.txt", b"21")] * 3 + [size(b"backup.txt", b"4096"), size(b"todo1.txt", b"12"),
                                                  size(b"plans.txt", b"733"), size(b"plans.txt", b"735")]
    m = machine(sessions)
    (t,) = m.transitions.values()
    assert t.literal is None and len(m.states[t.target].labels) == 5
    for name, answer in ((b"backup.txt", b"4096"), (b"todo1.txt", b"12"), (b"notes.txt", b"21")):
        out = run(m, [b"SIZE " + name + b"\r\n"], trickle=trickle)
        assert out.unmatched == [] and out.answers[1] == b"213 " + answer + b"\r\n"
    # A file it never saw: the most frequent. One whose size changed between sessions: one
    # of its own sizes, not another file's.
    assert run(m, [b"SIZE other.txt\r\n"], trickle=trickle).answers[1] == b"213 21\r\n"
    assert run(m, [b"SIZE plans.txt\r\n"], trickle=trickle).answers[1] in (b"213 733\r\n", b"213 735\r\n")


def _srv(name: bytes) -> tuple[bytes, bytes]:
    """A DNS question for `name` (type SRV), and its header as a query (flags 0100)."""
    question = b"".join(bytes([len(p)]) + p for p in name.split(b".")) + b"\x00\x00\x21\x00\x01"
    return b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + question, question


def _nxdomain(name: bytes):
    query, question = _srv(name)
    return session((query, b"\x00\x01\x81\x83\x00\x01\x00\x00\x00\x00\x00\x00" + question), port=53)


def _found(name: bytes):
    query, question = _srv(name)
    record = b"\xc0\x0c\x00\x21\x00\x01\x00\x00\x00\x00\x00\x12\x00\x00\x00\x64\x00\x58\x04dc01\x04test\x00"
    return session((query, b"\x00\x01\x85\x80\x00\x01\x00\x01\x00\x00\x00\x00" + question + record), port=53)


@TRICKLE
def test_an_answer_of_binary_given_as_a_samples_carries_the_ids_of_the_request_at_hand(trickle):
    # dig's queries each have an id of their own, which the answer repeats at its place, and
    # a name never asked is answered as the nearest query was. That answer with the nearest
    # query's id would be dropped by the client. Over TCP the id is after the length.
    def query(qid: bytes, name: bytes, tcp: bool) -> tuple[bytes, bytes]:
        q, question = _srv(name)
        q, a = qid + q[2:], qid + b"\x81\x83\x00\x01\x00\x00\x00\x00\x00\x00" + question
        return (len(q).to_bytes(2, "big") + q, len(a).to_bytes(2, "big") + a) if tcp else (q, a)
    names = [b"alpha.corp.test", b"beta.corp.test", b"gamma.corp.test"]
    for tcp in (False, True):
        learned = [session(query(bytes([7 * i + 1, 9 * i + 2]), n, tcp), port=53) for i, n in enumerate(names)]
        # A name as long as a sample's, one longer, one shorter: the NXDOMAIN the server
        # gives, to the client's id and question. Where the names differ in length the
        # bytes past the header are not the same fields: the id is taken at its place, the
        # name where the words say (_echoes), and the question is whole (it was cut short,
        # or had the sample's type twice).
        for name in (b"delta.corp.test", b"epsilon.corp.test", b"pi.corp.test"):
            request, expected = query(b"\xbe\xef", name, tcp)
            assert nearest_answer(learned, request, trickle=trickle) == expected, (tcp, name)


@TRICKLE
def test_an_answer_of_binary_given_as_a_samples_keeps_the_servers_own_bytes(trickle):
    # samba's NTLMSSP challenge, given to a session setup whose SMB process id is not the
    # sample's (`e5 02`, now `Y5`): the id is the request's at its place, and the message
    # type `02 00 00 00` stays the server's. It was taken for an echo of the id's last byte
    # and the zeros after it, and became `Y5 00 00 00`: nmap's smb-os-discovery, handed a
    # challenge one byte longer, printed the workgroup in place of the host's names.
    def setup(pid: bytes) -> tuple[bytes, bytes]:
        request = b"\xffSMBs\x00\x00\x00\x00\x18\x45\x68" + bytes(12) + pid + b"\x00\x00\x01\x00\x0c\xff"
        answer = b"\xffSMBs\x16\x00\x00\xc0\x88\x07\x48" + bytes(12) + pid + b"\x7c\xfa\x01\x00\x04\xff"
        return (request + b"NTLMSSP\x00\x01\x00\x00\x00\x15\x82\x08\x00",
                answer + b"NTLMSSP\x00\x02\x00\x00\x00\x12\x00\x12\x00\x38\x00\x00\x00F\x00S\x00")
    request, _ = setup(b"Y5")
    assert nearest_answer([session(setup(b"\xe5\x02"), port=445)], request, trickle=trickle) == setup(b"Y5")[1]


DNS_TOOLS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "dev" / "dns" / "dns_dev_tools.pcap"


@pytest.mark.skipif(not DNS_TOOLS.exists(), reason="../shared/corpus is absent")
def test_a_query_never_captured_answered_as_a_pattern_of_several_answers_asks_its_own_question():
    # dig's `corpus.test NS`, held out of the corpus dnsmasq capture, matches the pattern of
    # `corpus.test SOA` and `nosuchhost.corpus.test A`, and is answered as SOA's empty
    # NOERROR was (the most frequent of that pattern's answers). With SOA's question type,
    # dig would take it for no answer to its question.
    from scriptgen.capture import read_sessions
    from scriptgen.model import Transport

    question = b"\x06corpus\x04test\x00\x00\x02\x00\x01"
    sessions = [s for s in read_sessions([str(DNS_TOOLS)]) if s.transport == Transport.UDP]
    (held,) = [s for s in sessions if question in s.messages[0].data]
    (port,) = learn([s for s in sessions if s is not held], LearnParams(jobs=1)).ports
    out = run(Machine(port_doc(port)), [held.messages[0].data])
    assert out.unmatched == [] and out.answers[1] == held.messages[1].data


@TRICKLE
def test_of_two_matching_patterns_the_one_most_requests_like_it_took_answers(trickle):
    # nmap's dns-srv-enum against dnsmasq: most `_<service>._tcp` names do not exist, a few
    # do. The pattern of those few (`<$1>\x04_<$2>p\x04corp...`) is the more specific, but
    # the capture's `_*._tcp` requests that both patterns match mostly got NXDOMAIN.
    rng = random.Random(7)
    def word(lo: int, hi: int) -> bytes:
        return bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(lo, hi)))
    missing = [b"_" + word(3, 9) + proto + b".corp.test" for proto in (b"._tcp", b"._udp") for _ in range(20)]
    missing += [word(3, 12) + b".corp.test" for _ in range(20)]
    known = [b"_ldap._tcp.corp.test", b"_kerberos._tcp.corp.test", b"_kerberos._udp.corp.test", b"_gc._tcp.corp.test"]
    m = machine([_nxdomain(n) for n in missing] + [_found(n) for n in known])
    assert len(m.transitions) == 2  # NXDOMAIN's pattern, and the found names' more specific one
    for name in (b"_kpasswd._tcp.corp.test", b"_xmpp._udp.corp.test", b"backup.corp.test"):
        out = run(m, [_srv(name)[0]], trickle=trickle)
        assert out.unmatched == [] and out.answers[1][2:4] == b"\x81\x83", name
    out = run(m, [_srv(b"_ldap._tcp.corp.test")[0]], trickle=trickle)
    assert out.answers[1][2:4] == b"\x85\x80" and out.answers[1].endswith(b"\x04dc01\x04test\x00")


@TRICKLE
def test_a_pattern_that_saw_the_very_request_answers_it(trickle):
    # Most `_*._tcp` names the capture asked for existed; `_kpasswd._tcp` (asked twice, so
    # among the samples) did not: it gets NXDOMAIN, an unseen name the answer most got.
    rng = random.Random(8)
    known = [b"_" + bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9))) + b"._tcp.corp.test"
             for _ in range(12)]
    missing = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 12))) + b".corp.test"
               for _ in range(40)]
    m = machine([_nxdomain(n) for n in missing + [b"_kpasswd._tcp.corp.test"] * 2] + [_found(n) for n in known])
    assert len(m.transitions) == 2
    assert run(m, [_srv(b"_kpasswd._tcp.corp.test")[0]], trickle=trickle).answers[1][2:4] == b"\x81\x83"
    assert run(m, [_srv(b"_sip._tcp.corp.test")[0]], trickle=trickle).answers[1][2:4] == b"\x85\x80"


def test_a_name_the_server_never_showed_is_answered_as_one_it_did_not_have():
    # lftp's `cd` into a directory the listing did not show: byte for byte nearer to the `cd`
    # into one it showed (250) than to the `cd` into one it did not (550).
    listing = b"150 Here comes the listing.\r\ndrwxr-xr-x 2 1001 0 4096 Jun 03 projects\r\n-rw-r--r-- 1 1001 0 8 reports\r\n"
    sessions = [session((b"LIST\r\n", listing), (b"CWD projects\r\n", b"250 Directory successfully changed.\r\n"),
                        banner=BANNER),
                session((b"LIST\r\n", listing), (b"CWD archive\r\n", b"550 Failed to change directory.\r\n"),
                        banner=BANNER)]
    m = machine(sessions, macro=0.0)
    out = run(m, [b"LIST\r\n", b"CWD old-files\r\n"])
    assert out.unmatched == ["nearest"] and out.answers[2] == b"550 Failed to change directory.\r\n"
    # A name it showed is answered as the shown one was.
    out = run(m, [b"LIST\r\n", b"CWD reports\r\n"])
    assert out.unmatched == ["nearest"] and out.answers[2] == b"250 Directory successfully changed.\r\n"


def test_a_file_name_in_bytes_the_server_never_listed_is_answered_as_one_it_did_not_have():
    # smbclient's `get absent.txt`: its SMB2 CREATE is as long as the one of `readme.txt`
    # (200) and so begins with the same length field, and one byte for byte nearer to it
    # than to the CREATE of `nothere.txt` (NOT_FOUND). Names in bytes are UTF-16LE.
    def smb(command: int, body: bytes) -> bytes:
        message = b"\xfeSMB@\x00\x01\x00" + bytes([command, 0]) + b"\x00" * 6 + body
        return len(message).to_bytes(4, "big") + message

    def create(name: str) -> bytes:
        return smb(5, b"9\x00\x00\x00\x02\x00" + name.encode("utf-16-le"))
    listing = smb(14, b"\x00" * 8 + "readme.txt".encode("utf-16-le") + b"\x00" * 8 + "hours.txt".encode("utf-16-le"))
    found, missing = smb(5, b"\x00\x00\x00\x00Y\x00\x01"), smb(5, b"4\x00\x00\xc0\t\x00\x00")
    sessions = [session((smb(14, b"*"), listing), (create("readme.txt"), found), port=445),
                session((smb(14, b"*"), listing), (create("nothere.txt"), missing), port=445)]
    m = machine(sessions, macro=0.0)
    out = run(m, [smb(14, b"*"), create("absent.txt")])
    assert out.unmatched == ["nearest"] and out.answers[2] == missing
    # A name the listing showed is answered as the listed one was.
    out = run(m, [smb(14, b"*"), create("hours.txt")])
    assert out.unmatched == ["nearest"] and out.answers[2] == found


@TRICKLE
def test_an_unknown_value_is_answered_as_those_tried_once_rather_than_the_one_come_back_to(trickle):
    # The right password came back session after session; a wrong one was tried once. A
    # password never seen, a little nearer the right one byte for byte, is refused.
    def login(password: bytes, answer: bytes):
        return session((b"USER bob\r\n", b"331 Please specify the password.\r\n"), (b"PASS " + password + b"\r\n", answer),
                       banner=BANNER)
    sessions = [login(b"adm1n2024", b"230 Login successful.\r\n")] * 2 + [login(b"letmein", b"530 Login incorrect.\r\n")]
    t = run(machine(sessions, macro=0.0), [b"USER bob\r\n", b"PASS admin\r\n"], trickle=trickle)
    assert t.unmatched == ["nearest"] and t.answers[2] == b"530 Login incorrect.\r\n"
    # nmap fetched the home page three times and probed one missing page: another page it
    # never saw gets the 404, though byte for byte it is nearer the home page's request.
    headers = b" HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: Mozilla/5.0 (compatible; Nmap Scripting Engine)\r\n\r\n"
    home, missing = b"HTTP/1.1 200 OK\r\n\r\nwelcome", b"HTTP/1.1 404 Not Found\r\n\r\nnot found"
    pages = [session((b"GET /" + headers, home), port=80)] * 3 + [session((b"GET /sdk" + headers, missing), port=80)]
    t = run(machine(pages, macro=0.0), [b"GET /HNAP1" + headers], trickle=trickle)
    assert t.unmatched == ["nearest"] and t.answers[1] == missing


@TRICKLE
def test_among_similar_samples_one_of_the_same_command_answers(trickle):
    # Redis: a GET of the key a DEL was seen for is byte for byte nearer to that DEL than
    # to the GET of another key. The command is the request's first name.
    sessions = [session((b"*2\r\n$3\r\nDEL\r\n$8\r\napp:name\r\n", b":1\r\n"), port=6379),
                session((b"*2\r\n$3\r\nGET\r\n$11\r\napp:version\r\n", b"$5\r\n3.2.1\r\n"), port=6379)]
    assert nearest_answer(sessions, b"*2\r\n$3\r\nGET\r\n$8\r\napp:name\r\n", trickle=trickle) == b"$5\r\n3.2.1\r\n"


def test_requests_answered_alike_are_microclustered_again():
    # nmap's HTTP probes: GET (frequent), HEAD, TRACE and OPTIONS of / (200) among made-up
    # methods (405). No method is frequent in the whole cluster, so each answer had one
    # wildcard method, and the heavier 405 one took GET too. Among the 200s GET is
    # frequent: a literal of its own, the others still a wildcard.
    made_up = (b"KNHN", b"OHDG", b"QZTW", b"XPLR", b"MNBV", b"PLKJ", b"WERT", b"ZXCV")
    sessions = [session((m + b" / HTTP/1.1\r\n\r\n", b"405 Not Allowed"), port=80) for m in made_up]
    sessions += [session((m + b" / HTTP/1.1\r\n\r\n", b"200 OK"), port=80)
                 for m in (b"GET", b"GET", b"GET", b"GET", b"HEAD", b"TRACE", b"OPTIONS")]
    m = machine(sessions, macro=1.0)
    for method, answer in ((b"GET", b"200 OK"), (b"ABCD", b"405 Not Allowed")):
        assert run(m, [method + b" / HTTP/1.1\r\n\r\n"]).answers[1] == answer
    # Where microclustering them again would leave no wildcard (each value a literal of its
    # own), they stay one: the test above this one keeps its unknown users' wildcard.


def _write(tag: bytes, name: bytes) -> bytes:
    stub = bytes(range(64))  # the call's fixed part: the WRITEs of all shares are one pattern
    return b"\x00W" + tag + stub + bytes([len(name)]) + name.decode().encode("utf-16-le") + b"\x00\x00\x01\x02"


def _pipe(name: bytes, ident: int, data: bytes):
    """A session of a binary RPC over a pipe, as nmap's NetShareGetInfo over SMB: a WRITE
    that names a share, then a READ alike for every share but for its id, answered with
    that share's data."""
    tag = ident.to_bytes(2, "big")
    write = _write(tag, name)
    read = b"\x00R" + tag + b"\x00\x10\x00\x00\xff\xff\xff\xff\x00\x00"
    return session((write, b"\x00w" + tag + b"\x00\x00"), (read, b"\x00r" + tag + bytes([len(data)]) + data), port=445)


SHARES = {b"IPC$": b"IPC Service (Samba)", b"docs": b"Documents\x00\x01", b"public": b"Public files, read only",
          b"backup": b"\x00\x02Backups"}


@TRICKLE
def test_an_answer_that_depends_on_the_request_before_is_the_one_that_followed_a_request_like_it(trickle):
    # Samba answers each share's READ with that share's data: the READs are alike but for
    # their ids, the WRITE before names the share.
    rng = random.Random(9)
    m = machine([_pipe(name, rng.randrange(65536), data) for name, data in SHARES.items() for _ in range(2)])
    assert len(m.transitions) == 5  # one WRITE pattern, then a READ pattern per answer: each matches every READ
    for name, data in SHARES.items():
        ident = rng.randrange(65536).to_bytes(2, "big")  # ids the capture never had
        write = _write(ident, name)
        read = b"\x00R" + ident + b"\x00\x10\x00\x00\xff\xff\xff\xff\x00\x00"
        out = run(m, [write, read], trickle=trickle)
        assert out.answers[2] == b"\x00r" + ident + bytes([len(data)]) + data, name


def smtp_sessions() -> list:
    out = []
    for who, to, body, queued in (
            (b"alice", b"bob", b"Subject: hi\r\n\r\nhello bob\r\n.\r\n", b"1xV5wt-0008W2-0C"),
            (b"carol", b"dave", b"Subject: weekly report\r\n\r\nall systems nominal\r\n.\r\n", b"1xV5wt-000060-2S"),
            (b"erin", b"frank", b"Date: Sun, 22 Nov 2026\r\nSubject: status\r\n\r\nsent by a script\r\n.\r\n",
             b"1xV5wu-000094-39")):
        out.append(session((b"EHLO " + who + b"-pc\r\n", b"250-mx Hello " + who + b"-pc\r\n250 HELP\r\n"),
                           (b"MAIL FROM:<" + who + b"@corpus.test>\r\n", b"250 OK\r\n"),
                           (b"RCPT TO:<" + to + b"@corpus.test>\r\n", b"250 Accepted\r\n"),
                           (b"DATA\r\n", b"354 Enter message\r\n"), (body, b"250 OK id=" + queued + b"\r\n"),
                           (b"QUIT\r\n", b"221 closing\r\n"), banner=b"220 mx ESMTP\r\n", closed_by=Sender.SERVER,
                           port=25))
    return out


@TRICKLE
def test_pipelined_lines_are_cut_where_every_request_of_their_state_ends(trickle):
    # Mail bodies hold CRLFs: the model as a whole has no terminator. The state after MAIL
    # still has one (its RCPTs' CRLF, not the `@corpus.test>\r\n` they all ended with), so a
    # RCPT to another domain, pipelined with DATA, is one request and DATA another, each
    # answered at once: not the two as one after idle_gap.
    m = machine(smtp_sessions())
    assert m.terminator == b""
    t = run(m, [b"EHLO gina-pc\r\n", b"MAIL FROM:<gina@corpus.test>\r\nRCPT TO:<hal@other.example>\r\nDATA\r\n"],
            trickle=trickle, gap=0.3)
    assert t.answers[2] == b"250 OK\r\n250 Accepted\r\n354 Enter message\r\n"


@TRICKLE
def test_a_command_in_other_letter_case_is_the_command_learned(trickle):
    # smtplib says `ehlo`, the capture's clients said `EHLO`: SMTP (and FTP, POP3, IMAP,
    # Redis) commands ignore case. The log keeps what the client sent.
    m = machine(smtp_sessions())
    t = run(m, [b"ehlo gina-pc\r\n"], trickle=trickle)
    assert t.answers[1] == b"250-mx Hello gina-pc\r\n250 HELP\r\n" and t.unmatched == []
    conn = Emulator(m, 0.0)
    conn.receive_data(b"ehlo gina-pc\r\n", 0.0)
    events = [conn.next_event(1.0) for _ in range(3)]
    assert [e.data for e in events if type(e).__name__ == "Input"] == [b"ehlo gina-pc\r\n"]


@TRICKLE
def test_a_request_ending_as_every_request_of_its_state_is_answered_as_one_of_them(trickle):
    # After DATA every request ended `\r\n.\r\n`: a mail, however unlike the learned ones,
    # gets a mail's answer, not the EHLO answer of the model's most similar bytes (which
    # made `250-mx Hello alice-pc\n\nhi\n\r\n250 HELP`).
    m = machine(smtp_sessions(), macro=0.0)
    mail = b"From: alice-pc\n\nhi\n\r\n.\r\n"
    t = run(m, [b"EHLO alice-pc\r\n", b"MAIL FROM:<alice@corpus.test>\r\n", b"RCPT TO:<bob@corpus.test>\r\n",
                b"DATA\r\n", mail], trickle=trickle)
    assert t.answers[5].startswith(b"250 OK id=") and t.unmatched == ["nearest"]


@TRICKLE
def test_a_command_learned_only_in_another_state_is_answered_as_there(trickle):
    # In the state after login the model saw STAT (whose bytes are more like this EPRT's
    # than anything else is) and SYST; EPRT only after SYST. The command says what answers.
    sessions = [
        session((b"USER alice\r\n", b"331 Password required.\r\n"), (b"PASS secret\r\n", b"230 Logged in.\r\n"),
                (b"STAT 10.0.0.1 40001\r\n", b"211-Status of 10.0.0.1\r\n211 End of status\r\n"),
                (b"QUIT\r\n", b"221 Bye.\r\n"), banner=BANNER, closed_by=Sender.SERVER),
        session((b"USER bob\r\n", b"331 Password required.\r\n"), (b"PASS secret\r\n", b"230 Logged in.\r\n"),
                (b"SYST\r\n", b"215 UNIX Type: L8\r\n"),
                (b"EPRT |1|10.0.0.1|40001|\r\n", b"200 EPRT command successful.\r\n"),
                (b"QUIT\r\n", b"221 Bye.\r\n"), banner=BANNER, closed_by=Sender.SERVER)]
    t = run(machine(sessions), [b"USER carol\r\n", b"PASS secret\r\n", b"EPRT |1|10.0.0.1|40777|\r\n"],
            trickle=trickle)
    assert t.answers[3] == b"200 EPRT command successful.\r\n" and t.unmatched[-1] == "elsewhere"


def test_a_sample_with_the_very_request_line_is_nearer_than_one_with_a_line_like_it():
    # curl's `GET /` never learned: nmap's `GET /` (other headers) got the home page, curl's
    # `GET /files/` (the same headers) a listing. The line names what is asked; `/` and
    # `/files/` are 0.83 alike as lines, and the same headers had made the listing nearer.
    curl = b" HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n"
    nmap = (b" HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: Mozilla/5.0 (compatible; Nmap Scripting Engine;"
            b" https://nmap.org/book/nse.html)\r\nConnection: close\r\n\r\n")
    home, listing = http_answer(b"200 OK", b"<html>Welcome</html>"), http_answer(b"200 OK", b"Index of /files/")
    sessions = [session((b"GET /" + nmap, home), port=80), session((b"GET /files/" + curl, listing), port=80)]
    assert nearest_answer(sessions, b"GET /" + curl) == home


def test_a_binary_request_is_not_cut_at_a_byte_its_state_only_ended_with():
    # Every learned request ends `\x07\x00` and holds no NUL before: a request whose id is
    # a NUL, sent a byte at a time, is still one request. Cutting at the shortest suffix
    # (a line end's rule, for text only) cut it at its first NUL; smbclient's requests, in
    # TCP segments, fell apart that way (e2e SMB 9/9 to 7/9).
    sessions = [session((b"\x05REQ" + x + b"\x07\x00", b"\x06ACK" + x), port=445) for x in (b"\x01", b"\x02", b"\x03")]
    t = run(machine(sessions), [b"\x05REQ\x00\x07\x00"], trickle=True)
    assert t.unmatched == [] and t.answers[1] == b"\x06ACK\x00"


@TRICKLE
def test_an_answer_of_another_command_repeats_none_of_its_words(trickle):
    # RSET never learned: its nearest is HELP, whose answer lists HELP, a word of Exim's own
    # (its EHLO answer ends `250 HELP`). The answer is given as learned, not with `HELP`
    # replaced by `RSET` (`... QUIT RSET RSET`): one command's answer does not repeat
    # another's words. The same command's arguments still are.
    hello = b"250-mx Hello %s\r\n250 HELP\r\n"
    sessions = [
        session((b"EHLO alice-pc\r\n", hello % b"alice-pc"),
                (b"HELP\r\n", b"214-Commands supported:\r\n214 HELO EHLO MAIL QUIT RSET HELP\r\n"),
                (b"QUIT\r\n", b"221 Bye.\r\n"), banner=b"220 mx ESMTP\r\n", closed_by=Sender.SERVER),
        session((b"EHLO bob-pc\r\n", hello % b"bob-pc"), (b"QUIT\r\n", b"221 Bye.\r\n"),
                banner=b"220 mx ESMTP\r\n", closed_by=Sender.SERVER)]
    t = run(machine(sessions), [b"EHLO carol-pc\r\n", b"RSET\r\n"], trickle=trickle)
    assert t.answers[1] == hello % b"carol-pc"
    assert t.answers[2] == b"214-Commands supported:\r\n214 HELO EHLO MAIL QUIT RSET HELP\r\n"


@pytest.mark.parametrize("closed_by, closed", [(Sender.CLIENT, None), (Sender.SERVER, "server")])
def test_a_port_nobody_spoke_on_is_open_and_silent_or_closes_as_it_did(closed_by, closed):
    # Learned from connections the port accepted and nobody spoke on (a scan's): no banner,
    # nothing answered, and the connection closed at once where the server closed it then.
    scanned = session(port=3306, closed_by=closed_by)
    scanned.accepted = True
    m = machine([scanned])
    for trickle in (False, True):
        t = run(m, [b"\x16\x03\x01hello", b"GET / HTTP/1.0\r\n\r\n"], trickle=trickle)
        assert t.closed == closed
        assert t.answers == ([b""] if closed else [b"", b"", b""])
