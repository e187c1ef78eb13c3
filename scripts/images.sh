#!/usr/bin/env bash
# Builds the two images the real test node runs, without a registry or a
# container engine, into a cache outside the repository:
#
#   $SEXTANT_CACHE/images/<source hash>/pause.tar     sextant.test/pause:v1
#   $SEXTANT_CACHE/images/<source hash>/netcheck.tar  sextant.test/netcheck:v1
#
# Each is one static Go binary of tests/images/ (pause: the sandbox's
# process; netcheck: a TCP server with a `probe` client mode) packed by
# tests/images/ocipack into an OCI image layout archive (with a docker
# manifest.json beside it) that `ctr -n k8s.io images import` takes. The
# directory is keyed by a hash of the sources and the Go version and is
# complete once it holds `.complete`; later runs build nothing.
#
# Usage: scripts/images.sh           build what is missing, print the paths
#        scripts/images.sh --print   print the paths only (may be unbuilt)
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${SEXTANT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sextant}
SRC=tests/images
command -v go >/dev/null || { echo "images: go not found on PATH (the Go toolchain builds the test images)" >&2; exit 1; }
hash=$( (go version; find "$SRC" -type f \( -name '*.go' -o -name go.mod \) | LC_ALL=C sort | xargs cat) | sha256sum | cut -c1-16)
DIR=$CACHE/images/$hash

print() {
  echo "SEXTANT_IMAGES_DIR=$DIR"
  echo "SEXTANT_PAUSE_IMAGE=sextant.test/pause:v1"
  echo "SEXTANT_PAUSE_TAR=$DIR/pause.tar"
  echo "SEXTANT_NETCHECK_IMAGE=sextant.test/netcheck:v1"
  echo "SEXTANT_NETCHECK_TAR=$DIR/netcheck.tar"
}
if [ "${1:-}" = "--print" ]; then
  print
  exit 0
fi

if [ ! -f "$DIR/.complete" ]; then
  rm -rf "$DIR"
  mkdir -p "$DIR/bin"
  export CGO_ENABLED=0 GOFLAGS="-buildvcs=false -trimpath" GOTOOLCHAIN=${GOTOOLCHAIN:-local}
  (cd "$SRC" && go build -ldflags='-s -w' -o "$DIR/bin/" ./pause ./netcheck ./ocipack)
  "$DIR/bin/ocipack" -binary "$DIR/bin/pause" -ref sextant.test/pause:v1 -out "$DIR/pause.tar"
  "$DIR/bin/ocipack" -binary "$DIR/bin/netcheck" -ref sextant.test/netcheck:v1 -out "$DIR/netcheck.tar" -arg serve
  touch "$DIR/.complete"
fi
print
