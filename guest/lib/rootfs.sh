# shellcheck shell=bash
# Root disk, first part: the Debian base tree. debootstrap --variant=minbase bookworm from the host's apt
# mirror, packed as a zstd tarball (numeric owners, xattrs, ACLs), so that a change of the agent or of
# guest/rootfs/ only re-packs an image (guest/lib/rootfs-image.sh) instead of re-running debootstrap.
# This file is part of the base's cache key (and so, through the base key, of the image's).

rootfs_pkgs=(debootstrap e2fsprogs zstd)
rootfs_suite=bookworm
rootfs_variant=minbase
# tar's options for the base tarball, both ways: keep owners as numbers, file capabilities and ACLs.
rootfs_tar_opts=(--numeric-owner --xattrs --xattrs-include='*' --acls --zstd)

# apt_mirror: the first Debian mirror this host's apt configuration uses for $rootfs_suite, from
# /etc/apt/sources.list, /etc/apt/sources.list.d/*.list (one-line format) or *.sources (deb822).
apt_mirror() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        # deb [options] URI SUITE COMPONENTS...
        awk -v suite="$rootfs_suite" '
            $1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                if ($(i + 1) == suite) { print $i; exit }
            }' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        # Stanzas separated by blank lines; take URIs of a stanza whose Types has deb and Suites has the suite.
        awk -v suite="$rootfs_suite" '
            function flush() {
                if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") && enabled != "no" && uris != "") {
                    split(uris, u, " "); print u[1]; found = 1; exit
                }
                types = suites = uris = enabled = ""
            }
            /^[ \t]*$/ { flush(); next }
            /^#/ { next }
            tolower($1) == "types:" { $1 = ""; types = $0 }
            tolower($1) == "suites:" { $1 = ""; suites = $0 }
            tolower($1) == "uris:" { $1 = ""; uris = $0 }
            tolower($1) == "enabled:" { enabled = tolower($2) }
            END { if (!found) flush() }' "$f"
    done
}

rootfs_base_key() { # rootfs_base_key MIRROR: everything the base tree depends on, as text
    echo "cairn-guest-rootfs-base suite=$rootfs_suite variant=$rootfs_variant"
    echo "mirror=$1"
    echo "debootstrap=$(pkg_version debootstrap)"
    echo "tar=${rootfs_tar_opts[*]}"
    echo "== lib/rootfs.sh"
    cat "$recipe/lib/rootfs.sh"
}

# build_rootfs_base: sets rootfs_base_hash and rootfs_base_path (the cached base.tar.zst),
# running debootstrap first if needed.
build_rootfs_base() {
    local mirror dir root t0=$SECONDS
    ensure_pkgs "${rootfs_pkgs[@]}"
    mirror=$(apt_mirror | head -n1)
    [ -n "$mirror" ] || die "no Debian mirror for $rootfs_suite found in /etc/apt/sources.list{,.d/}"
    rootfs_base_hash=$(rootfs_base_key "$mirror" | short_hash)
    dir="$cache_root/rootfs-base-$rootfs_base_hash"
    rootfs_base_path="$dir/base.tar.zst"
    if [ -f "$rootfs_base_path" ]; then
        msg "rootfs base: cached $rootfs_base_path"
        return 0
    fi

    [ "$(id -u)" = 0 ] ||
        die "building the root disk's base (debootstrap) needs root; run as root, or pass --no-rootfs"
    log_name="rootfs-base-$rootfs_base_hash"
    new_tmp_dir "$log_name"
    root="$tmp_dir/root"
    mkdir -p "$tmp_dir/out"
    msg "rootfs base: debootstrap --variant=$rootfs_variant $rootfs_suite from $mirror (a few minutes)"
    run_logged "$tmp_dir/out/build.log" "debootstrap" \
        debootstrap --variant="$rootfs_variant" "$rootfs_suite" "$root" "$mirror"
    rm -rf -- "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    msg "rootfs base: packing the tree"
    run_logged "$tmp_dir/out/build.log" "tar" \
        tar -C "$root" "${rootfs_tar_opts[@]}" --sort=name -cf "$tmp_dir/out/base.tar.zst" .
    rootfs_base_key "$mirror" >"$tmp_dir/out/key.txt"
    publish "$tmp_dir/out" "$dir"
    msg "rootfs base: built $rootfs_base_path ($(du -h "$rootfs_base_path" | cut -f1)) in $((SECONDS - t0)) s"
}
