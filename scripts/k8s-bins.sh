#!/usr/bin/env bash
# Builds the upstream control plane the e2e tests run against, from Go
# modules, into a cache outside the repository keyed by version:
#
#   $SEXTANT_CACHE/kubernetes-v1.34.N/  kube-apiserver kube-controller-manager
#                                       kube-scheduler kubelet kubectl
#   $SEXTANT_CACHE/etcd-v3.6.N/         etcd
#   $SEXTANT_CACHE/kwok-v0.7.0/         kwok
#
# Each directory is complete only once it holds a `.complete` stamp; a
# directory without one is rebuilt, one with one is reused (idempotent, no
# work on later runs). Nothing here is committed to the repository.
#
# Why Kubernetes 1.34: this VM runs cgroup v1 and the kubelet of 1.35 and
# later refuses to start on cgroup v1 by default; 1.34 is the newest minor
# that still supports it, and the whole control plane is kept on one minor.
#
# Why etcd from a wrapper module: `go install go.etcd.io/etcd/server/v3@v`
# is refused because etcd's go.mod carries replace directives; a module of
# our own that requires it resolves the released sibling modules instead.
# Debian's etcd (3.4) is too old: kube-apiserver turns watch progress
# notifications off for etcd < 3.5.13.
#
# Usage: scripts/k8s-bins.sh            build what is missing, print the dirs
#        scripts/k8s-bins.sh --print    print the dirs as shell variables only
set -euo pipefail

KUBERNETES_VERSION=${KUBERNETES_VERSION:-v1.34.4}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
KWOK_VERSION=${KWOK_VERSION:-v0.7.0}
CACHE=${SEXTANT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sextant}

K8S_DIR=$CACHE/kubernetes-$KUBERNETES_VERSION
ETCD_DIR=$CACHE/etcd-$ETCD_VERSION
KWOK_DIR=$CACHE/kwok-$KWOK_VERSION

print_dirs() {
  echo "SEXTANT_K8S_BIN=$K8S_DIR"
  echo "SEXTANT_ETCD_BIN=$ETCD_DIR"
  echo "SEXTANT_KWOK_BIN=$KWOK_DIR"
}
if [ "${1:-}" = "--print" ]; then
  print_dirs
  exit 0
fi

command -v go >/dev/null || { echo "k8s-bins: go not found on PATH (Go >= 1.24 is needed)" >&2; exit 1; }
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOTOOLCHAIN=${GOTOOLCHAIN:-local}

# A scratch wrapper module; removed on exit.
new_wrapper() {
  local dir
  dir=$(mktemp -d "${TMPDIR:-/tmp}/sextant-k8s-bins.XXXXXX")
  WRAPPERS+=("$dir")
  echo "$dir"
}
WRAPPERS=()
trap 'rm -rf "${WRAPPERS[@]}"' EXIT

elapsed() { echo "$(( $(date +%s) - $1 ))s"; }

build_kubernetes() {
  local start w minor mod
  start=$(date +%s)
  echo "k8s-bins: building Kubernetes $KUBERNETES_VERSION (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kubectl) into $K8S_DIR"
  w=$(new_wrapper)
  cd "$w"
  go mod init sextant.local/k8s-bins >/dev/null 2>&1
  go mod edit -go=1.24 -godebug=default=go1.24
  go mod edit -require="k8s.io/kubernetes@$KUBERNETES_VERSION"
  # The staging modules: every `replace k8s.io/X => ./staging/...` in
  # Kubernetes' own go.mod becomes the published k8s.io/X v0.MINOR.PATCH.
  mod=$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
  [ -f "$mod" ] || { echo "k8s-bins: could not download k8s.io/kubernetes@$KUBERNETES_VERSION" >&2; exit 1; }
  local staging_version=v0.${KUBERNETES_VERSION#v1.}
  local staging
  staging=$(sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$mod" | sort -u)
  [ -n "$staging" ] || { echo "k8s-bins: no staging replaces found in $mod" >&2; exit 1; }
  for m in $staging; do
    go mod edit -replace="$m=$m@$staging_version"
  done
  echo "k8s-bins:   $(echo "$staging" | wc -l) staging modules pinned to $staging_version"
  cat > tools.go <<'EOF'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
EOF
  go mod tidy
  minor=${KUBERNETES_VERSION#v1.}
  minor=${minor%%.*}
  local ldflags=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  rm -rf "$K8S_DIR.tmp"
  mkdir -p "$K8S_DIR.tmp"
  go build -trimpath -ldflags "-s -w$ldflags" -o "$K8S_DIR.tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubelet \
    k8s.io/kubernetes/cmd/kubectl
  "$K8S_DIR.tmp/kube-apiserver" --version
  rm -rf "$K8S_DIR"
  mv "$K8S_DIR.tmp" "$K8S_DIR"
  touch "$K8S_DIR/.complete"
  echo "k8s-bins: Kubernetes $KUBERNETES_VERSION built in $(elapsed "$start")"
}

# build_module NAME VERSION DIR MODULE PACKAGE LDFLAGS: one binary NAME from
# PACKAGE of MODULE@VERSION through a wrapper module, into DIR.
build_module() {
  local name=$1 version=$2 dir=$3 module=$4 package=$5 ldflags=$6 start w
  start=$(date +%s)
  echo "k8s-bins: building $name $version into $dir"
  w=$(new_wrapper)
  cd "$w"
  go mod init "sextant.local/$name-bin" >/dev/null 2>&1
  go mod edit -require="$module@$version"
  printf '//go:build tools\n\npackage tools\n\nimport _ "%s"\n' "$package" > tools.go
  go mod tidy
  rm -rf "$dir.tmp"
  mkdir -p "$dir.tmp"
  go build -trimpath -ldflags "-s -w $ldflags" -o "$dir.tmp/$name" "$package"
  "$dir.tmp/$name" --version | head -1
  rm -rf "$dir"
  mv "$dir.tmp" "$dir"
  touch "$dir/.complete"
  echo "k8s-bins: $name $version built in $(elapsed "$start")"
}

build_etcd() {
  build_module etcd "$ETCD_VERSION" "$ETCD_DIR" go.etcd.io/etcd/server/v3 go.etcd.io/etcd/server/v3 ""
}

build_kwok() {
  build_module kwok "$KWOK_VERSION" "$KWOK_DIR" sigs.k8s.io/kwok sigs.k8s.io/kwok/cmd/kwok \
    "-X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION"
}

mkdir -p "$CACHE"
total=$(date +%s)
built=0
for part in etcd kwok kubernetes; do
  case $part in
    etcd) dir=$ETCD_DIR ;;
    kwok) dir=$KWOK_DIR ;;
    kubernetes) dir=$K8S_DIR ;;
  esac
  if [ ! -f "$dir/.complete" ]; then
    if ! ("build_$part"); then
      echo "k8s-bins: building $part failed (see above)" >&2
      exit 1
    fi
    built=1
  fi
done
if ((built)); then
  echo "k8s-bins: upstream binaries ready in $(elapsed "$total")"
fi
print_dirs
