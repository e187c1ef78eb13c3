# syntax=docker/dockerfile:1
# One target per image the chart runs, named as the chart names it
# (`<image.repository>/<target>:<tag>`, charts/sextant/values.yaml):
#
#   docker build --target sextant-agent -t ghcr.io/sextant/sextant-agent:0.1.0 .
#
# or `make images` for all of them. Builders and runtimes are both Debian
# bookworm, so the binaries find the glibc they were linked against.
# tests/tests/images.rs checks this file against the rendered chart and the
# workspace's bin targets.

FROM rust:1-bookworm AS builder
# clang, llvm, libbpf-dev (bpf/bpf_helpers.h), libelf-dev, zlib1g-dev,
# pkg-config: agent/build.rs compiles agent/bpf/datapath.c with
# `clang -target bpf` and the object is embedded in sextant-agent.
# protobuf-compiler: device-plugin/build.rs compiles kubelet's device-plugin API.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      clang llvm libbpf-dev libelf-dev zlib1g-dev pkg-config protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .

# Each build copies its binaries out of the cached target dir into /out.
# The operator is built without its default feature `sim`: the image has no
# simulated cloud and refuses `--provider sim` (a development build has it).
FROM builder AS build-operator
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --no-default-features -p sextant-operator --bin sextant-operator \
 && cargo build --release --locked -p sextant-webhook --bin sextant-webhook \
 && install -D -m 0755 -t /out target/release/sextant-operator target/release/sextant-webhook

FROM builder AS build-agent
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p sextant-agent --bin sextant-agent --bin sextant-cni \
 && install -D -m 0755 -t /out target/release/sextant-agent target/release/sextant-cni

FROM builder AS build-device-plugin
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p sextant-device-plugin --bin sextant-device-plugin \
 && install -D -m 0755 -t /out target/release/sextant-device-plugin

FROM builder AS build-scheduler-ext
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p sextant-scheduler-ext --bin sextant-scheduler-ext \
 && install -D -m 0755 -t /out target/release/sextant-scheduler-ext

FROM debian:bookworm-slim AS sextant-operator
# The cloud SDKs verify the EC2 / ECS endpoints against the system's roots.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build-operator /out/sextant-operator /usr/local/bin/sextant-operator
# Numeric, so kubelet can verify the chart's runAsNonRoot against it.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/sextant-operator"]

FROM debian:bookworm-slim AS sextant-webhook
COPY --from=build-operator /out/sextant-webhook /usr/local/bin/sextant-webhook
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/sextant-webhook"]

FROM debian:bookworm-slim AS sextant-scheduler-ext
COPY --from=build-scheduler-ext /out/sextant-scheduler-ext /usr/local/bin/sextant-scheduler-ext
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/sextant-scheduler-ext"]

# The device plugin creates its socket in kubelet's root-owned
# /var/lib/kubelet/device-plugins, so it runs as root, with every capability
# dropped by the chart.
FROM debian:bookworm-slim AS sextant-device-plugin
COPY --from=build-device-plugin /out/sextant-device-plugin /usr/local/bin/sextant-device-plugin
USER 0:0
ENTRYPOINT ["/usr/local/bin/sextant-device-plugin"]

# The agent runs as root: it programs the node's links, routes and BPF and
# enters pod network namespaces, with the capabilities the chart adds. Its
# install-cni init step (the same image) writes into the node's root-owned
# CNI directories with no capabilities at all, so only as their owner, uid 0;
# it runs /bin/sh, install, cp and mv from the base image.
FROM debian:bookworm-slim AS sextant-agent
COPY --from=build-agent /out/sextant-agent /out/sextant-cni /usr/local/bin/
USER 0:0
ENTRYPOINT ["/usr/local/bin/sextant-agent"]
