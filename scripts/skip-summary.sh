#!/usr/bin/env bash
# Prints the skip ledger that sextant-testkit fills when SEXTANT_SKIP makes a
# test or benchmark skip its tier, loudly, then removes it; prints nothing
# when nothing was skipped. `--clear` only removes it (before a run).
# The ledger is $SEXTANT_SKIP_LEDGER, else sextant-skipped.txt in
# $CARGO_TARGET_DIR (relative to the workspace) or the workspace's target/.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

target="${CARGO_TARGET_DIR:-target}"
[[ "$target" == /* ]] || target="$root/$target"
ledger="${SEXTANT_SKIP_LEDGER:-$target/sextant-skipped.txt}"

if [[ "${1:-}" == "--clear" ]]; then
  rm -f "$ledger"
  exit 0
fi

if [[ -s "$ledger" ]]; then
  n=$(wc -l <"$ledger")
  bar="################################################################################"
  {
    echo
    echo "$bar"
    echo "# SKIPPED: $n test(s) did not run: SEXTANT_SKIP${SEXTANT_SKIP:+=$SEXTANT_SKIP} skipped their tier"
    echo "$bar"
    sed 's/^/#   /' "$ledger"
    echo "$bar"
    echo
  } >&2
fi
rm -f "$ledger"
