#!/usr/bin/env bash
# Runs every cargo-fuzz target of proto/fuzz for N seconds each (default 20).
#   .ci/fuzz.sh [seconds]
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`); without them it
# prints why it is skipping and exits 0. A crash fails the script; the reproducer is in
# proto/fuzz/artifacts/<target>/ — turn it into a regression test in proto/tests/.
set -euo pipefail

seconds="${1:-20}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
    echo "fuzz.sh: the time budget must be a positive number of seconds, got '$seconds'" >&2
    exit 2
fi
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root/proto/fuzz"

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz.sh: SKIPPED — no nightly toolchain (install with: rustup toolchain install nightly)"
    exit 0
fi
if ! cargo +nightly fuzz --help >/dev/null 2>&1; then
    echo "fuzz.sh: SKIPPED — cargo-fuzz is not installed (install with: cargo install cargo-fuzz)"
    exit 0
fi

targets="$(cargo +nightly fuzz list)"
echo "fuzz.sh: building targets: $(echo $targets)"
cargo +nightly fuzz build 2>&1
status=0
for target in $targets; do
    log="$(mktemp)"
    echo "fuzz.sh: $target for ${seconds}s"
    if cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" -rss_limit_mb=2048 \
        >"$log" 2>&1; then
        runs="$(grep -Eo '^Done [0-9]+ runs' "$log" | tail -1 || true)"
        echo "fuzz.sh: $target ok (${runs:-no run count})"
    else
        echo "fuzz.sh: $target FAILED — last lines of its log:"
        tail -n 40 "$log"
        ls -1 "artifacts/$target" 2>/dev/null | sed 's/^/  reproducer: proto\/fuzz\/artifacts\/'"$target"'\//' || true
        status=1
    fi
    rm -f "$log"
done
exit "$status"
