#!/usr/bin/env bash
# Supply-chain checks with cargo-deny (policy: deny.toml).
#   .ci/deny.sh
# - licences, bans and sources: no network needed; a violation fails.
# - advisories (RustSec): the database is cloned from GitHub; where GitHub cannot be reached the
#   check is reported as SKIPPED, any advisory found where it can be reached fails.
# Without cargo-deny installed, everything is skipped with the install command (installing it
# builds from crates.io: about 5 CPU-minutes, so CI does not install it itself).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if ! cargo deny --version >/dev/null 2>&1; then
    echo "deny.sh: SKIPPED — cargo-deny is not installed (cargo install cargo-deny --locked)"
    exit 0
fi
echo "deny.sh: $(cargo deny --version)"
cargo deny --log-level warn check licenses bans sources

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if timeout 300 cargo deny --log-level warn check advisories >"$log" 2>&1; then
    echo "deny.sh: advisories ok"
elif grep -q 'failed to fetch advisory database' "$log"; then
    echo "deny.sh: advisories SKIPPED — the RustSec database could not be fetched (no route to GitHub):"
    grep -m1 -E 'fatal|Could not|failed' "$log" | sed 's/^/  /'
else
    cat "$log"
    echo "deny.sh: advisories FAILED"
    exit 1
fi
