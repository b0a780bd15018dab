"""Fixtures: a real `cairn serve` (private CAIRN_HOME, Unix socket and a TCP port on 127.0.0.1)
with one booted sandbox, checkpointed as `booted` so each test can start from it.

Needs /dev/kvm and the binaries: CAIRN_BIN (default <repo>/target/debug/cairn, next to
cairn-vmm) and CAIRN_AGENT_BIN (from guest/build). Without /dev/kvm the guest tests skip,
loudly, and fail under CAIRN_REQUIRE_KVM=1.

On this project's emulated-KVM hosts a guest process now and then dies at start (SIGSEGV,
or the agent connection drops; see docs/guest.md): `run` retries those, as the Rust
end-to-end tests do, and (unless `timeouts=False`) a timeout too. A real failure fails every
try. The 50-concurrent-execs test does not retry timeouts: the server queues agent connects
(per sandbox and host-wide), so none may time out.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, List, Union

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cairn import CairnError, Client, ExecResult, Sandbox  # noqa: E402

REPO = Path(__file__).resolve().parents[3]


def kvm_or_skip() -> None:
    ok = os.access("/dev/kvm", os.R_OK | os.W_OK)
    if not ok:
        if os.environ.get("CAIRN_REQUIRE_KVM") == "1":
            pytest.fail("/dev/kvm not available and CAIRN_REQUIRE_KVM=1")
        print("SKIP sdk tests: /dev/kvm not available", file=sys.stderr)
        pytest.skip("/dev/kvm not available")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running `cairn serve`."""

    def __init__(self) -> None:
        self.home = tempfile.mkdtemp(prefix="cairn-py", dir="/tmp")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.socket = os.path.join(self.home, "serve.sock")
        cairn = os.environ.get("CAIRN_BIN", str(REPO / "target/debug/cairn"))
        self.env = dict(os.environ, CAIRN_HOME=self.home)
        self.log = open(os.path.join(self.home, "serve.log"), "wb")
        self.proc = subprocess.Popen(
            [cairn, "serve", "--listen", f"127.0.0.1:{self.port}"],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 30
        while not os.path.exists(self.socket):
            assert self.proc.poll() is None, "cairn serve exited: " + self.log_text()
            assert time.time() < deadline, "cairn serve never listened"
            time.sleep(0.05)
        self.token = Path(self.home, "serve.token").read_text().strip()
        os.environ["CAIRN_HOME"] = self.home

    def log_text(self) -> str:
        return Path(self.home, "serve.log").read_text(errors="replace")

    def client(self) -> Client:
        return Client(socket=self.socket)

    def stop(self) -> None:
        with Client(socket=self.socket) as c:
            for sb in c.list():
                try:
                    c.request("DELETE", f"/sandboxes/{sb.name}")
                except CairnError:
                    pass
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        print(self.log_text()[-3000:], file=sys.stderr)
        shutil.rmtree(self.home, ignore_errors=True)


def flaky(e: Union[ExecResult, Exception], timeouts: bool = True) -> bool:
    if isinstance(e, ExecResult):
        return e.exit_code == 139
    text = str(e)
    signs = ("closed the connection", "agent crashed", "does not answer")
    return any(s in text for s in signs) or (timeouts and "timed out" in text)


def run(sb: Sandbox, cmd: Union[str, List[str]], timeouts: bool = True, **kw) -> ExecResult:
    """`sb.exec`, tried again when this host's guest lost the process (see the module doc)."""
    last: Union[ExecResult, Exception, None] = None
    for _ in range(8):
        try:
            r = sb.exec(cmd, **kw)
        except CairnError as e:
            if not flaky(e, timeouts):
                raise
            last = e
        else:
            if not flaky(r):
                return r
            last = r
        time.sleep(0.5)
    raise AssertionError(f"{cmd!r} kept failing: {last}")


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    kvm_or_skip()
    s = Server()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="session")
def base(server: Server) -> Iterator[Sandbox]:
    """One booted sandbox, checkpointed as `booted`."""
    t0 = time.time()
    sb = Sandbox.create("base", mem_mib=256, disk_gib=1, idle_timeout=0, client=server.client())
    print(f"create: {time.time() - t0:.1f} s", file=sys.stderr)
    run(sb, "true")
    sb.checkpoint("booted")
    yield sb
    sb.close()
