#!/usr/bin/env bash
# Installs what `make demo` / `make test` need on a fresh Debian machine, as
# root, idempotently: Debian packages (apt-get update once, only when
# something is missing) and a .venv with moto[server] and helm-python-sdk.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(clang llvm libbpf-dev libelf-dev zlib1g-dev pkg-config iproute2 bird2 nftables prometheus python3-venv protobuf-compiler containernetworking-plugins iptables openssl curl containerd runc)
PY_PACKAGES=("moto[server]==5.*" "helm-python-sdk")

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The interpreter for the venv: Debian's python3 (python3-venv above) unless
# one is already on PATH with a working venv module.
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv 2>/dev/null || /usr/bin/python3 -m venv .venv
fi
stamp=.venv/.sextant-packages
want="${PY_PACKAGES[*]}"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing Python packages: $want"
  .venv/bin/python -m pip install -q --disable-pip-version-check "${PY_PACKAGES[@]}"
  echo "$want" > "$stamp"
fi

command -v cargo-nextest >/dev/null || echo "setup: cargo-nextest not found; make test falls back to cargo test"

# The upstream control plane the e2e tests run against (Kubernetes, etcd,
# kwok), built from Go modules into a cache outside the repository; built
# only when missing (the first build takes 10-40 minutes, later runs none).
bash scripts/k8s-bins.sh >/dev/null
