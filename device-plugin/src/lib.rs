//! Kubelet device plugin for `sextant.io/ip` (work in progress, issue 4).
