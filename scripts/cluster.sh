#!/usr/bin/env bash
# `make cluster` / `make cluster-down`: a real control plane (etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, kwok) on loopback
# with Sextant installed on the simulated cloud, supervised in the
# background by target/debug/sextant-cluster; its files in $SEXTANT_CLUSTER_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${SEXTANT_CLUSTER_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sextant/dev-cluster}
LOG="$DIR.log"

running() { [ -f "$DIR/supervisor.pid" ] && kill -0 "$(cat "$DIR/supervisor.pid")" 2>/dev/null; }

case "${1:-up}" in
  up)
    if running; then
      echo "cluster: already running (supervisor pid $(cat "$DIR/supervisor.pid")); make cluster-down stops it"
    else
      rm -rf "$DIR"
      mkdir -p "$(dirname "$DIR")"
      echo "cluster: starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok and Sextant (log: $LOG)"
      nohup ./target/debug/sextant-cluster up --dir "$DIR" --sextant >"$LOG" 2>&1 </dev/null &
      for _ in $(seq 1 360); do
        if grep -q '^READY ' "$LOG"; then break; fi
        if grep -q '^FAILED ' "$LOG" || ! kill -0 $! 2>/dev/null; then
          echo "cluster: failed to start:" >&2
          sed 's/\\n/\n/g' "$LOG" | tail -40 >&2
          exit 1
        fi
        sleep 0.5
      done
      grep -q '^READY ' "$LOG" || { echo "cluster: not ready after 180 s; see $LOG" >&2; exit 1; }
    fi
    echo
    echo "Kubeconfig: $DIR/admin.kubeconfig"
    echo "Try:"
    grep '^  ' "$LOG" || true
    echo
    echo "Stop it with: make cluster-down"
    ;;
  down)
    if running; then
      ./target/debug/sextant-cluster down --dir "$DIR"
    else
      echo "cluster: not running"
    fi
    ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
