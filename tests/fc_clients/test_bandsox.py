"""bandsox 3.5, through `bandsox.vm.MicroVM`, the module its README's Architecture section names as
the wrapper of the Firecracker process (config, networking, vsock bridge). BandSox.create_vm()
itself builds its root disk from a Docker image (this host has no Docker daemon) and runs commands
through bandsox's Go guest agent, so the test drives MicroVM the way BandSox does: start_process(),
configure() (root drive with io_engine "Async", machine config, entropy, TAP device "tap<id>"
as eth0, and the vsock bridge: PUT /vsock/vsock0, then it waits for the vsock socket and listens
on <uds>_<port>), start(), update_drive() (PATCH /drives/rootfs after boot), pause(), resume(),
snapshot(), stop(), and load_snapshot() + resume() in a new MicroVM that takes over the old TAP
name, as BandSox.restore_vm does. The guest's serial console is the VMM's stdout, which MicroVM reads line by line.
"""
import os
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from conftest import api_get, ticks, wait_until

from bandsox.vm import MicroVM


class Console:
    def __init__(self, vm):
        self.lines = []
        self.lock = threading.Lock()
        vm.multiplexer.add_callback(self._line)

    def _line(self, line):
        with self.lock:
            self.lines.append(line)

    def ticks(self) -> int:
        with self.lock:
            return ticks("".join(self.lines))


@pytest.fixture
def sock_dir():
    # Unix socket paths must stay under 108 bytes; pytest's tmp_path is too deep for bandsox's.
    d = tempfile.mkdtemp(prefix="bx", dir="/tmp")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def _new_vm(fc_bin, sock_dir):
    vm_id = str(uuid.uuid4())
    vm = MicroVM(vm_id, str(sock_dir / f"{vm_id}.sock"), firecracker_bin=str(fc_bin))
    try:
        vm.start_process()
    except BaseException:
        vm.stop()
        raise
    return vm, Console(vm)


def test_lifecycle_vsock_pause_snapshot_load(fc_bin, guest, disk, tmp_path, sock_dir):
    vm, console = _new_vm(fc_bin, sock_dir)
    vm2 = None
    try:
        vm.configure(str(guest), str(disk), 1, 64, enable_networking=True, enable_vsock=True)
        # configure() raised unless the vsock socket appeared after PUT /vsock returned.
        assert os.path.exists(vm.vsock_socket_path)
        assert vm.vsock_listener is not None
        status, cfg = api_get(vm.socket_path, "/vm/config")
        assert status == 200
        assert cfg["drives"][0]["io_engine"] == "Async"
        assert cfg["vsock"]["uds_path"] == vm.vsock_socket_path
        assert cfg["network-interfaces"][0]["host_dev_name"] == vm.tap_name
        assert cfg["entropy"] is not None

        vm.start()
        wait_until(lambda: console.ticks() >= 3, 30, "the guest's ticks on the console")

        vm.pause()
        assert api_get(vm.socket_path, "/")[1]["state"] == "Paused"
        time.sleep(0.3)
        before = console.ticks()
        time.sleep(1.0)
        assert console.ticks() == before, "the guest ran while paused"
        vm.resume()
        wait_until(lambda: console.ticks() > before, 20, "ticks after resume")

        # PATCH /drives/rootfs after boot (bandsox's update_drive(), used when it restores).
        disk2 = tmp_path / "disk2.img"
        with open(disk2, "wb") as f:
            f.truncate(1 << 20)
        vm.update_drive("rootfs", str(disk2))
        assert api_get(vm.socket_path, "/vm/config")[1]["drives"][0]["path_on_host"] == str(disk2)

        vm.pause()
        snap, mem = tmp_path / "snap", tmp_path / "mem"
        vm.snapshot(str(snap), str(mem))
        assert mem.stat().st_size >= 64 << 20
        tap, vsock_path = vm.tap_name, vm.vsock_socket_path
        vm.stop()
        # BandSox.restore_vm gives the restored VMM a fresh vsock path through a mount namespace;
        # the stopped VMM's socket file is still there, and both VMMs refuse to bind over it.
        if os.path.exists(vsock_path):
            os.unlink(vsock_path)

        # As BandSox.restore_vm: a new VMM, the old TAP name (load_snapshot() makes the device).
        vm2, console2 = _new_vm(fc_bin, sock_dir)
        vm2.tap_name = tap
        vm2.load_snapshot(str(snap), str(mem), enable_networking=True)
        assert api_get(vm2.socket_path, "/")[1]["state"] == "Paused"
        vm2.resume()
        wait_until(lambda: console2.ticks() >= 3, 30, "ticks from the loaded snapshot")
        status, cfg2 = api_get(vm2.socket_path, "/vm/config")
        assert status == 200
        assert cfg2["drives"][0]["io_engine"] == "Async"
        assert cfg2["machine-config"]["mem_size_mib"] == 64
        assert cfg2["drives"][0]["path_on_host"] == str(disk2)
        process = vm2.process
        vm2.stop()
        assert process.poll() is not None, "stop() left the VMM running"
    finally:
        for v in (vm2, vm):
            if v is not None:
                v.stop()
