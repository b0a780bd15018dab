# shellcheck shell=bash
# Kernel part of the guest recipe: tinyconfig + fragments (+ patches for the emulated profile) -> vmlinux.
# This file is part of the kernel cache key.

kernel_src_tarball=/usr/src/linux-source-6.1.tar.xz
kernel_pkgs=(linux-source-6.1 build-essential bc bison flex libelf-dev libssl-dev xz-utils patch)

kernel_fragments() { # kernel_fragments PROFILE: the config fragments, in merge order
    printf '%s\n' "$recipe/kernel/base.config"
    [ "$1" = emulated ] && printf '%s\n' "$recipe/kernel/emulated.config"
    return 0
}

kernel_patches() { # kernel_patches PROFILE: the patches, in apply order
    [ "$1" = emulated ] || return 0
    local p
    for p in "$recipe"/patches/emulated/*.patch; do
        [ -e "$p" ] && printf '%s\n' "$p"
    done
    return 0
}

kernel_key() { # kernel_key PROFILE: everything the vmlinux depends on, as text
    local f
    echo "cairn-guest-kernel profile=$1"
    echo "linux-source-6.1=$(pkg_version linux-source-6.1)"
    echo "cc=$(gcc --version | head -n1)"
    for f in "$recipe/lib/kernel.sh" $(kernel_fragments "$1") $(kernel_patches "$1"); do
        echo "== ${f#"$recipe"/}"
        cat "$f"
    done
}

# check_config CONFIG FRAGMENT...: every `CONFIG_X=v` must be in CONFIG as written, every
# `# CONFIG_X is not set` must be absent from it. Fails listing all that did not stick.
check_config() {
    local config=$1 bad=() line opt
    shift
    while IFS= read -r line; do
        case "$line" in
            CONFIG_*=*)
                grep -qxF -- "$line" "$config" || bad+=("$line (got: $(grep -E "^(# )?${line%%=*}[= ]" "$config" || echo 'not present'))")
                ;;
            "# CONFIG_"*" is not set")
                opt=${line#"# "}; opt=${opt%" is not set"}
                ! grep -q "^$opt=" "$config" || bad+=("$line (got: $(grep "^$opt=" "$config"))")
                ;;
        esac
    done < <(cat "$@")
    if [ "${#bad[@]}" -gt 0 ]; then
        printf 'guest: error: kernel config options did not end up as requested:\n' >&2
        printf '  %s\n' "${bad[@]}" >&2
        return 1
    fi
}

# build_kernel PROFILE: sets kernel_path to the cached vmlinux, building it first if needed.
build_kernel() {
    local profile=$1 key dir src log frag p watcher
    ensure_pkgs "${kernel_pkgs[@]}"
    key=$(kernel_key "$profile" | short_hash)
    dir="$cache_root/$profile-$key"
    kernel_path="$dir/vmlinux"
    if [ -f "$kernel_path" ]; then
        msg "kernel: cached $kernel_path"
        return 0
    fi

    local t0=$SECONDS
    log_name="$profile-$key"
    new_tmp_dir "$log_name"
    log="$tmp_dir/out/build.log"
    mkdir -p "$tmp_dir/out"
    src="$tmp_dir/linux"
    msg "kernel ($profile): building $dir"

    msg "  [1/4] unpacking $(basename "$kernel_src_tarball") ($(pkg_version linux-source-6.1))"
    mkdir -p "$src"
    run_logged "$log" "unpacking the kernel source" \
        tar -xJf "$kernel_src_tarball" -C "$src" --strip-components=1

    msg "  [2/4] patches: $(kernel_patches "$profile" | wc -l)"
    for p in $(kernel_patches "$profile"); do
        echo "== applying ${p#"$recipe"/}" >>"$log"
        run_logged "$log" "applying ${p#"$recipe"/}" patch -d "$src" -p1 --forward --batch -i "$p"
    done

    msg "  [3/4] config: tinyconfig + $(kernel_fragments "$profile" | xargs -n1 basename | tr '\n' ' ')"
    run_logged "$log" "make tinyconfig" make -C "$src" ARCH=x86_64 tinyconfig
    # shellcheck disable=SC2046
    run_logged "$log" "merge_config.sh" env -C "$src" ARCH=x86_64 \
        scripts/kconfig/merge_config.sh -m .config $(kernel_fragments "$profile")
    run_logged "$log" "make olddefconfig" make -C "$src" ARCH=x86_64 olddefconfig
    # shellcheck disable=SC2046
    check_config "$src/.config" $(kernel_fragments "$profile") || build_failed "$log" "kernel config"

    msg "  [4/4] make -j$(nproc) vmlinux (about 4 minutes on 2 cores)"
    if [ "${quiet:-0}" != 1 ]; then
        progress_watch "$log" &
        watcher=$!
        bg_pids+=("$watcher")
    fi
    run_logged "$log" "kernel build" make -C "$src" ARCH=x86_64 -j"$(nproc)" vmlinux
    if [ -n "${watcher:-}" ]; then
        kill "$watcher" 2>/dev/null || true
        wait "$watcher" 2>/dev/null || true
        forget_pid "$watcher"
    fi

    cp -- "$src/vmlinux" "$tmp_dir/out/vmlinux"
    cp -- "$src/.config" "$tmp_dir/out/config"
    kernel_key "$profile" >"$tmp_dir/out/key.txt"
    publish "$tmp_dir/out" "$dir"
    msg "kernel ($profile): done in $((SECONDS - t0)) s: $kernel_path"
}
