"""Interactive exec (stdin over a WebSocket) and sessions, against a real `cairn serve` and a
real guest (see conftest.py)."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

import pytest

from cairn import AsyncSandbox, CairnError, Process, Sandbox
from conftest import Server, flaky, run

T = TypeVar("T")

# Written as `sleep 31[8]` in the pattern so the checking process does not match itself.
SLEEPERS = "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' ' | grep -o 'sleep 31[8]' || true"


def tried(f: Callable[[], T]) -> T:
    """`f`, tried again when this host's guest lost the process at start (see conftest.py)."""
    last: Exception = AssertionError("never ran")
    for _ in range(6):
        try:
            return f()
        except (CairnError, TimeoutError, AssertionError) as e:
            if isinstance(e, CairnError) and not flaky(e) and e.status != 0:
                raise
            last = e
        time.sleep(0.5)
    raise last


def test_cat_echoes_stdin_back(base: Sandbox) -> None:
    def once() -> None:
        with base.exec_interactive(["cat"]) as p:
            assert p.pid
            p.send("hello\n")
            assert p.read_until("hello\n") == b"hello\n"
            p.send(b"\x00\xffbytes")
            p.close_stdin()
            r = p.wait(timeout=120)
            assert (r.stdout.encode("utf-8", "replace"), r.exit_code) == ("\x00\ufffdbytes".encode(), 0), r

    tried(once)


def test_sh_in_a_tty_resizes_and_exits_with_its_code(base: Sandbox) -> None:
    def once() -> None:
        with base.exec_interactive("sh", tty=(24, 80)) as p:
            p.send("stty size; echo $((6*7))\n")
            out = p.read_until("42\r\n")
            assert b"24 80" in out, out
            p.resize(30, 100)
            p.send("stty size\n")
            assert b"30 100" in p.read_until("30 100")
            p.send("exit 3\n")
            r = p.wait(timeout=120)
            assert r.exit_code == 3, r
            assert r.stderr == ""  # a tty merges stderr into stdout

    tried(once)


def test_disconnect_kills_a_non_session_process(base: Sandbox) -> None:
    def once() -> None:
        p = base.exec_interactive("echo go; sleep 318; echo")
        p.read_until("go")
        p.close()

    tried(once)
    time.sleep(3)
    deadline = time.time() + 120
    while run(base, SLEEPERS).stdout.strip():
        assert time.time() < deadline, "the exec outlived its client"
        time.sleep(1)


def test_bad_frames_and_missing_things_get_clear_errors(server: Server, base: Sandbox) -> None:
    with pytest.raises(CairnError) as e:
        Sandbox("nope", base._c, owns_client=False).exec_interactive("true")
    assert e.value.status == 404
    with pytest.raises(CairnError) as e:
        base.sessions.attach(999999)
    assert e.value.status == 404
    with pytest.raises(CairnError) as e:
        base.exec_interactive([])
    assert e.value.code == "bad_request"
    with base.exec_interactive(["cat"]) as p:
        p._ws.send('{"type":"resize","rows":"x"}')
        with pytest.raises(CairnError) as e:
            p.wait(timeout=60)
        assert e.value.code == "bad_request" and "bad frame" in str(e.value)


def session_input_round_trip(base: Sandbox) -> None:
    s = base.sessions.start("while read l; do echo \"got $l\"; done", stdin=True)
    try:
        listed = {x.id: x for x in base.sessions.list()}
        assert listed[s.id].state == "running" and listed[s.id].stdin, listed
        with base.sessions.attach(s.id) as p:
            p.send("one\n")
            assert b"got one" in p.read_until("got one\n")
            p.detach()
        # Detached, it goes on: its output waits for the next attach.
        assert [x.state for x in base.sessions.list() if x.id == s.id] == ["running"]
        with base.sessions.attach(s.id) as p:
            assert p.replay >= len("got one\n")
            p.send("two\n")
            out = p.read_until("got two\n")
            assert b"got one\n" in out, out
        # Closing the socket without a word detaches too.
        assert [x.state for x in base.sessions.list() if x.id == s.id] == ["running"]
        with base.sessions.attach(s.id) as p:
            p.read_until("got two\n")
            p.close_stdin()
            r = p.wait(timeout=120)
            assert r.exit_code == 0, r
    finally:
        try:
            base.sessions.kill(s.id)
        except CairnError:
            pass
    assert s.id not in [x.id for x in base.sessions.list()]


def test_attach_to_a_session_send_input_and_see_its_effect(base: Sandbox) -> None:
    tried(lambda: session_input_round_trip(base))


def test_a_session_outlives_its_client(base: Sandbox) -> None:
    s = base.sessions.start(["sh", "-c", "echo started; sleep 318"])
    try:
        with base.sessions.attach(s.id) as p:
            p.read_until("started")
        time.sleep(2)
        assert [x.state for x in base.sessions.list() if x.id == s.id] == ["running"]
        assert "sleep 318" in run(base, SLEEPERS).stdout
    finally:
        base.sessions.kill(s.id)


async def test_the_async_twin_types_and_attaches(server: Server, base: Sandbox) -> None:
    async with await AsyncSandbox.connect("base") as sb:
        assert "base" in [i.name for i in await AsyncSandbox.list()]
        for _ in range(6):
            try:
                async with await sb.exec_interactive(["cat"]) as p:
                    await p.send("async\n")
                    assert b"async" in await p.read_until("async\n")
                    await p.close_stdin()
                    assert (await p.wait(timeout=120)).exit_code == 0
                break
            except (CairnError, TimeoutError) as e:
                if isinstance(e, CairnError) and not flaky(e):
                    raise
        s = await sb.sessions.start("read l; echo \"read $l\"", stdin=True)
        try:
            assert s.id in [x.id for x in await sb.sessions.list()]
            async with await sb.sessions.attach(s.id) as p:
                await p.send("x\n")
                await p.read_until("read x")
                r = await p.wait(timeout=120)
                assert r.exit_code == 0
        finally:
            await sb.sessions.kill(s.id)


def test_process_type_is_exported() -> None:
    assert Process.__doc__ and "type into" in Process.__doc__
