# shellcheck shell=bash
# Initramfs part of the guest recipe: busybox-static + guest/initramfs/ (+ the agent) -> uncompressed
# newc cpio. This file is part of the initrd cache key.

initrd_pkgs=(busybox-static cpio)

# Applets that get a /bin link. The busybox shell runs every applet without a link (Debian's
# busybox-static prefers its own applets), so links are only for programs that exec a path directly,
# such as the kernel running /init through /bin/sh or the agent running a command. Each cpio entry costs
# kernel time to unpack under emulation, so the list stays short.
initrd_applets=(sh ash cat cp dd df echo env false grep head hostname ip kill ln ls mkdir mount mv
    poweroff ps reboot rm sleep sync tail test true umount uname)

initrd_key() { # initrd_key AGENT: everything the initrd depends on, as text
    local f
    echo "cairn-guest-initrd"
    echo "busybox-static=$(pkg_version busybox-static)"
    echo "busybox-sha256=$(sha256sum </bin/busybox | cut -d' ' -f1)"
    echo "applets=${initrd_applets[*]}"
    if [ -n "$1" ]; then
        echo "agent-sha256=$(sha256sum <"$1" | cut -d' ' -f1)"
    else
        echo "agent=none"
    fi
    for f in "$recipe/lib/initrd.sh" $(find "$recipe/initramfs" -type f | LC_ALL=C sort); do
        echo "== ${f#"$recipe"/} $(stat -c %a "$f")"
        cat "$f"
    done
}

# build_initrd AGENT: sets initrd_path to the cached initrd.cpio, building it first if needed.
# AGENT is a static binary to install as /sbin/cairn-agent, or empty.
build_initrd() {
    local agent=$1 key dir root a
    ensure_pkgs "${initrd_pkgs[@]}"
    if [ -n "$agent" ]; then
        [ -f "$agent" ] || die "agent binary not found: $agent"
        file_is_static "$agent" || msg "warning: $agent does not look like a static binary; the initramfs has no libc"
    fi
    key=$(initrd_key "$agent" | short_hash)
    dir="$cache_root/initrd-$key"
    initrd_path="$dir/initrd.cpio"
    if [ -f "$initrd_path" ]; then
        msg "initrd: cached $initrd_path"
        return 0
    fi

    log_name="initrd-$key"
    new_tmp_dir "$log_name"
    root="$tmp_dir/root"
    mkdir -p "$tmp_dir/out" "$root"/{bin,sbin,etc,proc,sys,dev,tmp,root,run,usr/bin,usr/sbin}
    chmod 1777 "$root/tmp"
    cp -- /bin/busybox "$root/bin/busybox"
    for a in "${initrd_applets[@]}"; do
        ln -s busybox "$root/bin/$a"
    done
    cp -a -- "$recipe/initramfs/." "$root/"
    # The kernel opens /dev/console for /init before anything is mounted.
    mknod -m 600 "$root/dev/console" c 5 1
    if [ -n "$agent" ]; then
        install -m 755 -- "$agent" "$root/sbin/cairn-agent"
    fi
    # Reproducible archive: fixed times, owners and order.
    find "$root" -exec touch -h -d @0 {} +
    (cd "$root" && find . -mindepth 1 | LC_ALL=C sort |
        cpio --quiet -o -H newc -R 0:0 --reproducible >"$tmp_dir/out/initrd.cpio")
    initrd_key "$agent" >"$tmp_dir/out/key.txt"
    publish "$tmp_dir/out" "$dir"
    msg "initrd: built $initrd_path ($(du -h "$initrd_path" | cut -f1))"
}

file_is_static() { # true when $1 is an ELF with no program interpreter
    ! LC_ALL=C readelf -l "$1" 2>/dev/null | grep -q 'Requesting program interpreter'
}
