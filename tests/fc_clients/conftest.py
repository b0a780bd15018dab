"""Fixtures for the Firecracker client library tests (see run-tests and docs/vmm.md).

Each test runs once per VMM in `vmm`: "cairn" (cairn-vmm posing as `firecracker`) and, when
FIRECRACKER=PATH is set, "firecracker" (the control). run-tests starts pytest inside a private
network and mount namespace (`ns-setup`): /var/lib and /usr/local/bin are private tmpfs there, the
only network is a veth pair named eth0/eth1 with a default route that leads nowhere, so the TAP
devices, NAT rules and state files the libraries make vanish with the namespace and no packet can
leave it.
"""
import json
import os
import shutil
import socketserver
import http.server
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _inside_namespace() -> bool:
    return os.environ.get("CAIRN_FC_CLIENTS_NS") == "1"


def pytest_collection_modifyitems(config, items):
    if _inside_namespace():
        return
    skip = pytest.mark.skip(reason="run through tests/fc_clients/run-tests (it makes the namespace)")
    for item in items:
        item.add_marker(skip)


def _vmms():
    vmms = ["cairn"]
    if os.environ.get("FIRECRACKER"):
        vmms.append("firecracker")
    return vmms


@pytest.fixture(params=_vmms())
def vmm(request):
    return request.param


@pytest.fixture
def fc_bin(vmm, tmp_path) -> Path:
    """A file named `firecracker` that runs the VMM under test, in a folder of its own.

    cairn: a symlink to cairn-vmm. Firecracker: a symlink too, or, with FIRECRACKER_NO_SECCOMP=1
    (this host's glibc build of Firecracker is killed by its musl seccomp policy, see
    docs/benchmarks.md), a two-line script that execs it with --no-seccomp, so the process is
    still named `firecracker`. /usr/local/bin/firecracker (hysn-firecracker-python's fixed path,
    on the namespace's private tmpfs) points at the same file.
    """
    d = tmp_path / "bin"
    d.mkdir()
    exe = d / "firecracker"
    if vmm == "cairn":
        target = Path(os.environ.get("CAIRN_VMM", REPO / "target/debug/cairn-vmm"))
        if not target.is_file():
            pytest.fail(f"cairn-vmm not found at {target}: build it or set CAIRN_VMM")
        exe.symlink_to(target)
    else:
        target = Path(os.environ["FIRECRACKER"])
        if os.environ.get("FIRECRACKER_NO_SECCOMP") == "1":
            exe.write_text(f'#!/bin/sh\nexec {target} --no-seccomp "$@"\n')
            exe.chmod(0o755)
        else:
            exe.symlink_to(target)
    fixed = Path("/usr/local/bin/firecracker")
    if fixed.is_symlink() or fixed.exists():
        fixed.unlink()
    fixed.symlink_to(exe)
    return exe


@pytest.fixture(scope="session")
def guest() -> Path:
    """The tiny guest (ticklines.S): prints "S", then one "." line per pass over 4 MiB of RAM."""
    path = Path(os.environ.get("CAIRN_FC_CLIENTS_GUEST", REPO / "target/fc-clients/ticklines.elf"))
    if not path.is_file():
        pytest.fail(f"guest not found at {path} (run-tests assembles it)")
    return path


@pytest.fixture
def disk(tmp_path) -> Path:
    """A 1 MiB file for the root drive the libraries always attach (the guest never reads it)."""
    p = tmp_path / "disk.img"
    with open(p, "wb") as f:
        f.truncate(1 << 20)
    return p


class _DockerVersion(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.rstrip("/").endswith("/version"):
            body = json.dumps({"ApiVersion": "1.45", "Version": "none"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.server.others.append(f"GET {self.path}")
            self.send_response(501)
            self.end_headers()

    def do_POST(self):
        self.server.others.append(f"POST {self.path}")
        self.send_response(501)
        self.end_headers()

    def address_string(self):
        return "docker"

    def log_message(self, *args):
        pass


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def docker_version(tmp_path, monkeypatch):
    """hysn-firecracker-python's MicroVM() asks a Docker daemon for its API version
    (docker.from_env()) even when no image is used. This host has no Docker daemon, so, unless
    one is reachable, the test answers that single GET /version on a private socket (DOCKER_HOST)
    and records any other request: the test asserts there was none."""
    if os.path.exists("/var/run/docker.sock") and "DOCKER_HOST" not in os.environ:
        yield []
        return
    sock = tmp_path / "docker.sock"
    srv = _UnixServer(str(sock), _DockerVersion)
    srv.others = []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{sock}")
    try:
        yield srv.others
    finally:
        srv.shutdown()
        srv.server_close()


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def ticks(text: str) -> int:
    """The guest's "." lines in a console capture (VMM log lines may be mixed in)."""
    return sum(1 for line in text.splitlines() if line.strip() == ".")


def api_get(sock: str, path: str):
    """GET one path on a VMM's API socket, to check what a library configured."""
    import http.client
    import socket

    class Conn(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(sock)

    conn = Conn("localhost", timeout=10)
    try:
        conn.request("GET", path)
        reply = conn.getresponse()
        return reply.status, json.loads(reply.read() or b"null")
    finally:
        conn.close()
