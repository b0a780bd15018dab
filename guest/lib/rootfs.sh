# shellcheck shell=bash
# Root disk part of the guest recipe (guest/build --rootfs): debootstrap --variant=minbase bookworm
# (+ guest/rootfs/ + the agent) -> sparse ext4 image made with mkfs.ext4 -d. Boot it without an initrd:
# boot_args + "root=/dev/vda rw init=/sbin/cairn-init". This file is part of the rootfs cache key.

rootfs_pkgs=(debootstrap e2fsprogs)
rootfs_suite=bookworm
rootfs_size_mib=1024

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

rootfs_key() { # rootfs_key MIRROR AGENT
    local f
    echo "cairn-guest-rootfs suite=$rootfs_suite variant=minbase size_mib=$rootfs_size_mib"
    echo "mirror=$1"
    echo "debootstrap=$(pkg_version debootstrap)"
    if [ -n "$2" ]; then
        echo "agent-sha256=$(sha256sum <"$2" | cut -d' ' -f1)"
    else
        echo "agent=none"
    fi
    for f in "$recipe/lib/rootfs.sh" $(find "$recipe/rootfs" -type f | LC_ALL=C sort); do
        echo "== ${f#"$recipe"/} $(stat -c %a "$f")"
        cat "$f"
    done
}

# build_rootfs AGENT: sets rootfs_path to the cached ext4 image, building it first if needed.
build_rootfs() {
    local agent=$1 mirror key dir root
    ensure_pkgs "${rootfs_pkgs[@]}"
    mirror=$(apt_mirror | head -n1)
    [ -n "$mirror" ] || die "no Debian mirror for $rootfs_suite found in /etc/apt/sources.list{,.d/}"
    key=$(rootfs_key "$mirror" "$agent" | short_hash)
    dir="$cache_root/rootfs-$key"
    rootfs_path="$dir/rootfs.ext4"
    if [ -f "$rootfs_path" ]; then
        msg "rootfs: cached $rootfs_path"
        return 0
    fi

    log_name="rootfs-$key"
    new_tmp_dir "$log_name"
    root="$tmp_dir/root"
    mkdir -p "$tmp_dir/out"
    msg "rootfs: debootstrap --variant=minbase $rootfs_suite from $mirror (a few minutes)"
    run_logged "$tmp_dir/out/build.log" "debootstrap" \
        debootstrap --variant=minbase "$rootfs_suite" "$root" "$mirror"
    rm -rf -- "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    echo cairn >"$root/etc/hostname"
    # guest/rootfs/: /usr/sbin/cairn-init (init=/sbin/cairn-init; bookworm has merged /usr) and /etc/fstab.
    cp -a --remove-destination -- "$recipe/rootfs/." "$root/"
    if [ -n "$agent" ]; then
        install -m 755 -- "$agent" "$root/usr/sbin/cairn-agent"
    fi
    msg "rootfs: mkfs.ext4 -d into a sparse ${rootfs_size_mib} MiB image"
    truncate -s "${rootfs_size_mib}M" "$tmp_dir/out/rootfs.ext4"
    run_logged "$tmp_dir/out/build.log" "mkfs.ext4" \
        mkfs.ext4 -q -F -L cairn-root -E root_owner=0:0 -d "$root" "$tmp_dir/out/rootfs.ext4"
    rootfs_key "$mirror" "$agent" >"$tmp_dir/out/key.txt"
    publish "$tmp_dir/out" "$dir"
    msg "rootfs: built $rootfs_path ($(du -h "$rootfs_path" | cut -f1) used)"
}
