#!/usr/bin/env bash
# Docker-less static aarch64 build of outpost-agent, then a smoke run under qemu-user.
#
#   .ci/build-aarch64.sh
#
# 1. rustup's aarch64-unknown-linux-musl standard library (skipped with a message when it
#    cannot be fetched), Debian clang as the C compiler for ring, llvm-ar, rust-lld as linker.
# 2. cargo build --release -p outpost-agent --target aarch64-unknown-linux-musl; prints the
#    stripped size and runs `outpost-agent --version` under qemu-aarch64-static.
# 3. One real cycle: the host-built plant simulator and collector on loopback, the aarch64
#    agent under qemu generates its key, polls the plant once (--once) and sends a signed
#    summary over UDP; the collector must then list the plant's devices.
#
# Everything is configured here (no .cargo/config.toml) so the top level stays clean.
# Processes this script starts are stopped by their PID on exit.
set -euo pipefail

target=aarch64-unknown-linux-musl
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

say() { echo "build-aarch64: $*"; }
skip() {
    say "SKIPPED — $*"
    exit 0
}
die() {
    say "ERROR — $*" >&2
    exit 1
}

# --- 1. toolchain -------------------------------------------------------------------------
if ! rustup target list --installed | grep -qx "$target"; then
    say "adding the $target standard library"
    rustup target add "$target" ||
        skip "the $target standard library could not be fetched (offline?); run 'rustup target add $target' when online"
fi
for tool in clang llvm-ar qemu-aarch64-static; do
    command -v "$tool" >/dev/null ||
        die "$tool is missing; install it: apt-get install -y clang llvm qemu-user-static"
done

export CC_aarch64_unknown_linux_musl=clang
export CFLAGS_aarch64_unknown_linux_musl="--target=aarch64-linux-musl"
export AR_aarch64_unknown_linux_musl=llvm-ar
# rustc finds rust-lld in the toolchain's own bin directory.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld

# --- 2. build and --version ---------------------------------------------------------------
say "cargo build --release -p outpost-agent --target $target"
cargo build --release -p outpost-agent --target "$target"
bin="$root/target/$target/release/outpost-agent"
[ -x "$bin" ] || die "the build did not produce $bin"

stripped="$root/target/$target/release/outpost-agent.stripped"
llvm-strip -o "$stripped" "$bin" 2>/dev/null || cp "$bin" "$stripped"
size=$(stat -c %s "$stripped")
say "binary: $(file -b "$bin" 2>/dev/null || echo "$bin")"
say "stripped size: $size bytes ($((size / 1024)) KiB)"

qemu() { qemu-aarch64-static "$bin" "$@"; }
version="$(qemu --version)" || die "'outpost-agent --version' failed under qemu-aarch64-static"
say "under qemu: $version"

# --- 3. one cycle against the simulator ---------------------------------------------------
if ! qemu --help 2>/dev/null | grep -q keygen ||
    ! qemu run --help 2>/dev/null | grep -q -- --once; then
    skip "the agent CLI has no 'keygen' and 'run --once' yet; not running a cycle"
fi

host_bin="$root/target/debug"
if [ ! -x "$host_bin/outpost-sim" ] || [ ! -x "$host_bin/outpost-collector" ]; then
    say "building the host simulator and collector"
    cargo build -p outpost-testbed --bin outpost-sim -p outpost-collector --bin outpost-collector
fi

work="$(mktemp -d /tmp/outpost-aarch64.XXXXXX)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

# Waits (bounded) for a file to exist and be non-empty.
wait_file() {
    for _ in $(seq 200); do
        [ -s "$1" ] && return 0
        sleep 0.1
    done
    die "$2 did not become ready within 20 s"
}

"$host_bin/outpost-sim" --bind 127.0.77.1 --ready-file "$work/sim.json" \
    >"$work/sim.txt" 2>"$work/sim.log" &
pids+=($!)
wait_file "$work/sim.json" "the plant simulator"

qemu keygen --out "$work/keys" --agent gw-aarch64 >/dev/null
"$host_bin/outpost-collector" enroll --db "$work/cmdb.sqlite" --zone cell-a64 \
    --key "$work/keys/agent.pub" >/dev/null
"$host_bin/outpost-collector" serve --db "$work/cmdb.sqlite" --diode-listen 127.0.0.1:0 \
    --ready-file "$work/collector.addr" 2>"$work/collector.log" &
pids+=($!)
wait_file "$work/collector.addr" "the collector"

mkdir -p "$work/state"
{
    echo "agent_id = \"gw-aarch64\""
    echo "zone = \"cell-a64\""
    echo "state_dir = \"$work/state\""
    echo "key_file = \"$work/keys/agent.key\""
    echo
    echo "[diode]"
    echo "target = \"$(tr -d '[:space:]' <"$work/collector.addr")\""
    # The simulator's table: NAME ADDRESS UNITS VENDOR...; every simulated device has a
    # configuration holding block of at least 4 registers at 100.
    awk 'NR > 1 && NF >= 3 {
        printf "\n[[devices]]\nname = \"%s\"\naddress = \"%s\"\nunit_ids = [%s]\n", $1, $2, $3
        printf "[[devices.blocks]]\nname = \"config\"\nkind = \"holding\"\nstart = 100\ncount = 4\n"
    }' "$work/sim.txt"
} >"$work/agent.toml"
devices=$(grep -c '^\[\[devices\]\]' "$work/agent.toml")
[ "$devices" -gt 0 ] || die "could not read the simulator's device table ($work/sim.txt)"

say "one agent cycle under qemu against $devices simulated devices"
if ! timeout 180 qemu-aarch64-static "$bin" run --config "$work/agent.toml" --once \
    >"$work/agent.log" 2>&1; then
    cat "$work/agent.log" >&2
    die "the aarch64 agent's cycle failed (log above)"
fi

for _ in $(seq 100); do
    listed=$("$host_bin/outpost-collector" assets --db "$work/cmdb.sqlite" 2>/dev/null |
        grep -c 'tcp://127\.0\.77\.' || true)
    [ "$listed" -ge "$devices" ] && break
    sleep 0.1
done
"$host_bin/outpost-collector" assets --db "$work/cmdb.sqlite" || true
[ "${listed:-0}" -ge "$devices" ] ||
    die "the collector lists ${listed:-0} of the plant's $devices devices after the aarch64 agent's cycle"
say "OK: static aarch64 agent ($size bytes) inventoried $devices simulated devices into the CMDB"
