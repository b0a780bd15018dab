# shellcheck shell=bash
# Helpers shared by the guest recipe's parts: messages, packages, temp dirs, logged steps.
# Nothing here changes what is built, so this file is not part of any cache key; keep it that way.

msg() { [ "${quiet:-0}" = 1 ] || printf 'guest: %s\n' "$*" >&2; }
die() { printf 'guest: error: %s\n' "$*" >&2; exit 1; }

# sha256 of stdin, first 16 hex digits: short enough for a directory name, long enough to not collide.
short_hash() { sha256sum | cut -c1-16; }

# ensure_pkgs PKG...: install the Debian packages that are not installed yet (one apt-get call).
ensure_pkgs() {
    local missing=() p
    for p in "$@"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    [ "$(id -u)" = 0 ] || die "missing packages ${missing[*]} (run as root, or apt-get install them)"
    msg "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "${missing[@]}" >&2; then
        apt-get update >&2
        apt-get install -y --no-install-recommends "${missing[@]}" >&2
    fi
}

pkg_version() { dpkg-query -W -f='${Version}' "$1"; }

# Temporary directories live inside the cache root, so a finished entry is moved into place with one
# rename(2). The EXIT trap removes whatever was not moved; an interrupted build leaves no entry behind.
# (Entry locks are closed in every child that may outlive the script: see claim_entry.)
tmp_dirs=()
bg_pids=()
cleanup() {
    local p
    for p in "${bg_pids[@]}"; do
        kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true
    done
    for p in "${bg_pids[@]}"; do wait "$p" 2>/dev/null || true; done
    # A kernel tree takes a minute to delete: rename it out of the way at once and delete it in a
    # detached process, so the caller gets its answer (and ctrl-c returns) without waiting.
    for p in "${tmp_dirs[@]}"; do
        [ -e "$p" ] || continue
        if mv -T -- "$p" "${p/\/.tmp-//.trash-}" 2>/dev/null; then
            p=${p/\/.tmp-//.trash-}
        fi
        (close_lock_fds; exec setsid rm -rf -- "$p") </dev/null >/dev/null 2>&1 &
    done
}
trap cleanup EXIT
# Any command that fails outside run_logged: say which, instead of exiting silently.
set -E
trap 'printf "guest: error: \"%s\" failed (%s line %s)\n" "$BASH_COMMAND" "${BASH_SOURCE[0]##*/}" "$LINENO" >&2' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

forget_pid() { # forget_pid PID: drop PID from the cleanup list once it has been waited for
    local p keep=()
    for p in "${bg_pids[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    bg_pids=("${keep[@]}")
}

# new_tmp_dir NAME: claims the cache entry NAME and sets $tmp_dir to a directory to build it in (no
# command substitution, so the cleanup list sees it). When another run built NAME while this one waited
# for it, guest/build starts over, and finds everything cached.
new_tmp_dir() {
    if claim_entry "$1"; then
        msg "$1: built by another run meanwhile; starting over to use it"
        close_lock_fds
        exec "$recipe/build" "${build_argv[@]}"
    fi
    tmp_dir=$(mktemp -d "$cache_root/.tmp-$1.XXXXXX")
    tmp_dirs+=("$tmp_dir")
}

# claim_entry NAME: take the build lock of the cache entry NAME, so that two runs never build one entry
# side by side, while a run that needs other entries (another kernel, another image) goes on at once.
# (One lock for the whole cache made every `cairn create` wait out an unrelated 15-minute kernel build.)
# Returns 0 when the entry was published while this run waited, 1 when this run is to build it.
# The lock is released when guest/build exits; children never inherit it (they run close_lock_fds).
claim_entry() {
    local name=$1 fd
    exec {fd}>"$cache_root/.lock-$name"
    lock_fds+=("$fd")
    flock -n "$fd" && return 1
    msg "waiting for another guest/build of $name (lock: $cache_root/.lock-$name)"
    flock "$fd"
    [ -e "$cache_root/$name" ]
}
lock_fds=()

# close_lock_fds: close every entry lock in this (sub)shell, before it runs a long-lived child.
close_lock_fds() {
    local fd
    for fd in "${lock_fds[@]}"; do
        exec {fd}>&-
    done
}

# publish STAGE FINAL: atomically rename a finished stage directory into place.
publish() {
    if ! mv -T -- "$1" "$2" 2>/dev/null; then
        [ -d "$2" ] || die "cannot move $1 to $2"
        msg "another build published $2 first; keeping that one"
    fi
}

# run_logged LOG WHAT CMD...: run CMD in its own process group with output to LOG; on failure print the
# log's tail and where the full log was kept.
run_logged() {
    local log=$1 what=$2 pid
    shift 2
    (close_lock_fds; exec setsid "$@") >>"$log" 2>&1 &
    pid=$!
    bg_pids+=("$pid")
    if ! wait "$pid"; then
        build_failed "$log" "$what"
    fi
    forget_pid "$pid"
}

# build_failed LOG WHAT: keep LOG as $cache_root/failed-$log_name.log (the temp dir is removed on exit),
# print its tail and exit.
build_failed() {
    local kept="$cache_root/failed-$log_name.log"
    cp -f -- "$1" "$kept" 2>/dev/null || kept=$1
    printf 'guest: error: %s failed; last lines of the log (full log: %s):\n' "$2" "$kept" >&2
    tail -n 40 -- "$1" >&2
    exit 1
}

# progress_watch LOG: every 20 s, say how many files the kernel build has compiled so far.
progress_watch() {
    local start=$SECONDS n
    while sleep 20; do
        n=$(grep -c '^  CC ' "$1" || true)
        msg "  still building... $n files compiled ($((SECONDS - start)) s)"
    done
}
