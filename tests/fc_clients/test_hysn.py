"""hysn-firecracker-python 1.0.7 (imports as `firecracker`), as its README uses it: MicroVM(...),
create(), status(), inspect(), pause(), resume(), snapshot(action="create"), config(), create(
snapshot=True, ...) (snapshot load), delete(). It runs /usr/local/bin/firecracker (fixed in
firecracker.config.MicroVMConfig) and keeps its state in /var/lib/firecracker: both on the
namespace's private tmpfs (conftest.fc_bin). It always attaches a TAP device ("tap_<id>", made by
the library in the test's namespace) as eth0, and with mmds_enabled=True it configures MMDS V2
on eth0 and puts its metadata."""
import os
import time
from pathlib import Path

from conftest import api_get, ticks, wait_until

from firecracker import MicroVM  # noqa: E402


def _console(vm) -> Path:
    # The library sends the VMM's stdout (the guest's serial console) to firecracker.log.
    return Path(f"/var/lib/firecracker/{vm._microvm_id}/firecracker.log")


def _ticks(vm) -> int:
    return ticks(_console(vm).read_text(errors="replace"))


def test_lifecycle_mmds_vsock_pause(fc_bin, guest, disk, docker_version, tmp_path):
    vm = MicroVM(kernel_file=str(guest), base_rootfs=str(disk), memory=128, vsock_enabled=True,
                 mmds_enabled=True, user_data="hello from the test")
    vm2 = None
    try:
        assert vm.create() == f"VMM {vm._microvm_id} created"
        wait_until(lambda: _ticks(vm) >= 3, 30, "the guest's ticks on the console")
        assert vm.status() == f"VMM {vm._microvm_id} is running"

        sock = f"/var/lib/firecracker/{vm._microvm_id}/firecracker.socket"
        status, mmds = api_get(sock, "/mmds")
        assert status == 200
        assert mmds["latest"]["user-data"] == "hello from the test"
        assert mmds["latest"]["meta-data"]["instance-id"] == vm._microvm_id
        status, cfg = api_get(sock, "/vm/config")
        assert status == 200
        assert cfg["mmds-config"]["version"] == "V2"
        assert cfg["mmds-config"]["network_interfaces"] == ["eth0"]
        assert cfg["vsock"]["uds_path"] == f"/var/lib/firecracker/{vm._microvm_id}/v.sock"
        assert os.path.exists(cfg["vsock"]["uds_path"]), "the vsock socket exists once PUT /vsock returned"
        assert vm.config()["network-interfaces"][0]["host_dev_name"] == f"tap_{vm._microvm_id}"

        assert vm.pause() == f"VMM {vm._microvm_id} paused successfully"
        assert api_get(sock, "/")[1]["state"] == "Paused"
        assert vm.inspect()["State"]["Paused"] == "true"
        time.sleep(0.2)
        before = _ticks(vm)

        time.sleep(1.0)
        assert _ticks(vm) == before, "the guest ran while paused"
        assert vm.resume() == f"VMM {vm._microvm_id} resumed successfully"
        wait_until(lambda: _ticks(vm) > before, 20, "ticks after resume")

        assert vm.delete() == f"VMM {vm._microvm_id} is deleted"
    finally:
        for v in (vm, vm2):
            if v is not None:
                try:
                    v.delete()
                except Exception:
                    pass
    assert docker_version == [], "the library used Docker beyond GET /version"


def test_snapshot_create_and_load(fc_bin, guest, disk, docker_version, tmp_path):
    # No vsock here: the loaded VMM rebinds the snapshot's vsock path, which the first VMM still
    # holds (it stays up, paused, because delete() would remove the disk copy the snapshot names).
    vm = MicroVM(kernel_file=str(guest), base_rootfs=str(disk), memory=128)
    # A second address: the library refuses one that the first VM's TAP device has.
    vm2 = MicroVM(kernel_file=str(guest), base_rootfs=str(disk), memory=128, ip_addr="172.16.1.2")
    mem, snap = tmp_path / "mem", tmp_path / "snap"
    try:
        assert vm.create() == f"VMM {vm._microvm_id} created"
        wait_until(lambda: _ticks(vm) >= 3, 30, "the guest's ticks on the console")
        vm.pause()
        vm.snapshot(action="create", memory_path=str(mem), snapshot_path=str(snap))
        assert mem.stat().st_size >= 128 << 20
        assert snap.stat().st_size > 0
        # create(snapshot=True) starts a second VMM and loads the snapshot with resume_vm=True,
        # overriding the TAP device: the guest goes on ticking there.
        assert vm2.create(snapshot=True, memory_path=str(mem), snapshot_path=str(snap)) == \
            f"VMM {vm2._microvm_id} created"
        wait_until(lambda: _ticks(vm2) >= 3, 30, "ticks from the loaded snapshot")
        sock2 = f"/var/lib/firecracker/{vm2._microvm_id}/firecracker.socket"
        status, cfg = api_get(sock2, "/vm/config")
        assert status == 200
        assert cfg["network-interfaces"][0]["host_dev_name"] == f"tap_{vm2._microvm_id}"
        assert cfg["machine-config"]["mem_size_mib"] == 128
    finally:
        for v in (vm2, vm):
            try:
                v.delete()
            except Exception:
                pass
    assert docker_version == []
