# shellcheck shell=bash
# Root disk, second part: the image. The base tarball (guest/lib/rootfs.sh) + guest/rootfs/ (cairn-init,
# fstab) + the agent -> sparse ext4 image made with mkfs.ext4 -d (no loop mount). Boot it without an
# initrd: boot_args + "root=/dev/vda rw init=/sbin/cairn-init". This file is part of the image's key.

rootfs_size_mib=1024

rootfs_image_key() { # rootfs_image_key AGENT: everything the image depends on, as text
    local f
    echo "cairn-guest-rootfs size_mib=$rootfs_size_mib"
    echo "base=$rootfs_base_hash"
    echo "e2fsprogs=$(pkg_version e2fsprogs)"
    if [ -n "$1" ]; then
        echo "agent-sha256=$(sha256sum <"$1" | cut -d' ' -f1)"
    else
        echo "agent=none"
    fi
    for f in "$recipe/lib/rootfs-image.sh" $(find "$recipe/rootfs" -type f | LC_ALL=C sort); do
        echo "== ${f#"$recipe"/} $(stat -c %a "$f")"
        cat "$f"
    done
}

# build_rootfs AGENT: sets rootfs_path to the cached ext4 image, building it (and the base) if needed.
build_rootfs() {
    local agent=$1 key dir root t0
    build_rootfs_base
    t0=$SECONDS
    key=$(rootfs_image_key "$agent" | short_hash)
    dir="$cache_root/rootfs-$key"
    rootfs_path="$dir/rootfs.ext4"
    if [ -f "$rootfs_path" ]; then
        msg "rootfs: cached $rootfs_path"
        return 0
    fi

    # Unpacking the base keeps its owners (root, and a few system users) only when run as root.
    [ "$(id -u)" = 0 ] || die "building the root disk image needs root; run as root, or pass --no-rootfs"
    log_name="rootfs-$key"
    new_tmp_dir "$log_name"
    root="$tmp_dir/root"
    mkdir -p "$tmp_dir/out" "$root"
    msg "rootfs: unpacking the base, adding guest/rootfs/ and the agent"
    run_logged "$tmp_dir/out/build.log" "unpacking the base" \
        tar -C "$root" "${rootfs_tar_opts[@]}" -xf "$rootfs_base_path"
    echo cairn >"$root/etc/hostname"
    # guest/rootfs/: /usr/sbin/cairn-init (init=/sbin/cairn-init; bookworm has merged /usr) and /etc/fstab.
    cp -a --remove-destination -- "$recipe/rootfs/." "$root/"
    if [ -n "$agent" ]; then
        install -m 755 -- "$agent" "$root/usr/sbin/cairn-agent"
    fi
    truncate -s "${rootfs_size_mib}M" "$tmp_dir/out/rootfs.ext4"
    run_logged "$tmp_dir/out/build.log" "mkfs.ext4" \
        mkfs.ext4 -q -F -L cairn-root -E root_owner=0:0 -d "$root" "$tmp_dir/out/rootfs.ext4"
    rootfs_image_key "$agent" >"$tmp_dir/out/key.txt"
    publish "$tmp_dir/out" "$dir"
    msg "rootfs: built $rootfs_path ($(du -h "$rootfs_path" | cut -f1) used) in $((SECONDS - t0)) s"
}
