"""The SDK against a real `cairn serve` and a real guest (see conftest.py)."""

from __future__ import annotations

import io
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from cairn import AsyncSandbox, CairnError, Client, Sandbox
from conftest import Server, run

SLEEPERS = "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' ' | grep -o 'sleep 31[7]' || true"


def test_exec_streams_and_reports_exit_codes(base: Sandbox) -> None:
    r = run(base, "echo out; echo err >&2; exit 3")
    assert (r.stdout, r.stderr, r.exit_code, r.ok) == ("out\n", "err\n", 3, False)
    assert run(base, ["cat"], stdin="fed in").stdout == "fed in"
    assert run(base, ["cat"], stdin=b"\x00\xff").stdout == "\x00\ufffd"
    assert run(base, "echo $A; pwd", env={"A": "1"}, cwd="/tmp").stdout == "1\n/tmp\n"
    chunks = list(base.exec_stream("echo a; echo b >&2; exit 5"))
    assert chunks[-1].kind == "exit" and chunks[-1].exit_code == 5
    assert b"".join(c.data for c in chunks if c.kind == "stdout") == b"a\n"
    assert b"".join(c.data for c in chunks if c.kind == "stderr") == b"b\n"


def test_files(base: Sandbox) -> None:
    f = base.files
    f.write("/root/t/a.txt", "hello")
    f.write("/root/t/bin.dat", b"\x00\x01\x02", mode=0o600)
    assert f.read_text("/root/t/a.txt") == "hello"
    assert f.read("/root/t/bin.dat") == b"\x00\x01\x02"
    names = {e.name: e for e in f.list("/root/t")}
    assert set(names) == {"a.txt", "bin.dat"}
    assert names["bin.dat"].mode == "600" and names["a.txt"].size == 5
    assert f.stat("/root/t").kind == "dir"
    tar = f.download_tar("/root/t")
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        assert sorted(n.lstrip("./") for n in t.getnames() if n not in (".", "./")) == ["a.txt", "bin.dat"]
    f.upload_tar("/root/u", tar)
    assert f.read_text("/root/u/a.txt") == "hello"
    f.remove("/root/t")
    assert not f.exists("/root/t")
    with pytest.raises(CairnError) as e:
        f.read("/root/t/a.txt")
    assert e.value.status == 404
    for bad in ("/root/../etc/passwd", "relative"):
        with pytest.raises(CairnError) as e:
            f.read(bad)
        assert e.value.status == 400


def test_checkpoint_restore_and_fork(base: Sandbox) -> None:
    base.files.write("/root/state", "v1")
    meta = base.checkpoint("v1")
    assert meta["name"] == "v1"
    assert "v1" in [c["name"] for c in base.checkpoints()]
    base.files.write("/root/state", "v2")
    base.restore("v1")
    assert base.files.read_text("/root/state") == "v1"
    fork = base.fork("v1", "fork1")
    try:
        assert fork.files.read_text("/root/state") == "v1"
        fork.files.write("/root/state", "fork")
        assert base.files.read_text("/root/state") == "v1"
    finally:
        fork.delete()
    assert "fork1" not in [s.name for s in Sandbox.list(client=base._c)]


async def test_the_async_twin(server: Server, base: Sandbox) -> None:
    async with await AsyncSandbox.connect("base") as sb:
        r = await sb.exec("echo async")
        assert r.stdout == "async\n"
        await sb.files.write("/root/async.txt", "x")
        assert await sb.files.read_text("/root/async.txt") == "x"
        kinds = [c.kind async for c in sb.exec_stream("echo s")]
        assert kinds[-1] == "exit"


def test_tcp_needs_the_token_and_nothing_runs_without_it(server: Server, base: Sandbox) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = httpx.post(server.url + "/v1/sandboxes/base/exec", json={"command": "touch /root/intruder"}, headers=headers)
        assert r.status_code == 401 and r.json()["code"] == "unauthorized"
        r = httpx.post(server.url + "/v1/sandboxes", json={"name": "intruder"}, headers=headers)
        assert r.status_code == 401
    assert not base.files.exists("/root/intruder")
    assert "intruder" not in [s.name for s in Sandbox.list(client=base._c)]
    with Client(server.url, token=server.token) as c:
        assert c.health()["version"]
    r = httpx.post(server.url + "/v1/sandboxes", json={"name": "x", "bogus": 1}, headers={"Authorization": f"Bearer {server.token}"})
    assert r.status_code == 422 and "bogus" in r.json()["error"]


def test_a_client_that_leaves_mid_exec_leaves_no_process(base: Sandbox) -> None:
    cmd = "echo go; sh -c 'sleep 317; echo'; echo"
    for stream in (True, False):
        if stream:
            it = base.exec_stream(cmd)
            assert next(it).text == "go\n"
            it.close()
        else:
            sock = base._c.endpoint.socket
            with httpx.Client(transport=httpx.HTTPTransport(uds=sock), base_url="http://cairn") as h:
                with h.stream("POST", "/v1/sandboxes/base/exec", json={"command": cmd}) as resp:
                    assert resp.status_code == 200
                    next(resp.iter_raw())  # a heartbeat: the process runs
        # Each check is a guest exec: seconds on an emulated, loaded host. One that started
        # before the kill may still see the process; the deadline is generous.
        time.sleep(3)
        deadline = time.time() + 120
        while run(base, SLEEPERS).stdout.strip():
            assert time.time() < deadline, "the exec outlived its client"
            time.sleep(1)


def test_50_concurrent_execs_over_4_sandboxes(base: Sandbox) -> None:
    boxes = [base] + [base.fork("booted", f"conc{i}") for i in range(3)]
    try:
        for sb in boxes:
            sb.files.write("/root/me", sb.name)

        def one(i: int) -> tuple:
            sb = boxes[i % 4]
            # A timeout is a failure here: the server queues agent connects per sandbox.
            r = run(sb, f"echo {i} $(cat /root/me)", timeouts=False)
            return i, sb.name, r

        with ThreadPoolExecutor(50) as pool:
            results = list(pool.map(one, range(50)))
        for i, name, r in results:
            assert r.exit_code == 0, (i, name, r)
            assert r.stdout == f"{i} {name}\n", (i, name, r)
    finally:
        for sb in boxes[1:]:
            sb.delete()
