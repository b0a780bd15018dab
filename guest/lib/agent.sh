# shellcheck shell=bash
# The guest agent for guest/build when no --agent / CAIRN_AGENT_BIN is given: the static cairn-agent
# built from the source tree this recipe lives in. Not part of any cache key: the images depend on the
# agent binary's sha256, not on how it was built.

agent_triple=x86_64-unknown-linux-gnu

# build_agent: sets agent to the static cairn-agent built with cargo (a no-op when it is up to date).
# CAIRN_AGENT_TARGET_DIR overrides cargo's target directory (default <tree>/target/agent-static).
build_agent() {
    local src target_dir quiet_flag=()
    src=$(cd "$recipe/.." && pwd)
    if [ ! -f "$src/Cargo.toml" ] || [ ! -f "$src/agent/Cargo.toml" ]; then
        die "no --agent given and $src is not cairn's source tree to build it from (pass --agent PATH)"
    fi
    if ! command -v cargo >/dev/null; then
        PATH="$HOME/.cargo/bin:$PATH"
        command -v cargo >/dev/null ||
            die "cargo not found (install Rust, e.g. scripts/deps, or pass --agent PATH)"
    fi
    target_dir=${CAIRN_AGENT_TARGET_DIR:-$src/target/agent-static}
    [ "${quiet:-0}" = 1 ] && quiet_flag=(--quiet)
    msg "agent: cargo build --release -p cairn-agent --target $agent_triple (static) in $target_dir"
    # stdout too goes to stderr: guest/build's stdout carries only the key=value lines.
    if ! RUSTFLAGS='-C target-feature=+crt-static' CARGO_TARGET_DIR=$target_dir \
        cargo build "${quiet_flag[@]}" --release -p cairn-agent --target "$agent_triple" \
        --manifest-path "$src/Cargo.toml" >&2; then
        die "building the static cairn-agent failed (see cargo's output above)"
    fi
    agent="$target_dir/$agent_triple/release/cairn-agent"
    [ -f "$agent" ] || die "cargo succeeded but $agent is missing"
}
