#!/usr/bin/env bash
# The whole test suite, as CI and humans run it: formatting, lints, docs,
# and every test. Installs what it needs (cargo components; Debian packages
# via apt-get when run as root). Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain components"
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    rustup component add rustfmt clippy
fi

# Real peers the interop tests run against (curl, socat, iproute2 for the
# namespaces, tcpdump to read our pcap files) and g++ (libFuzzer for the fuzz
# smoke pass) and the programs the preload shim's tests run (netcat-openbsd,
# redis-server and redis-tools, nginx-light, iperf3; tcpdump also counts the
# leak test's packets), python3-scapy (the hostile-packet suite,
# tests/scapy/inject.py) and openssl (the DTLS interop peer), installed by
# name when we are root. python3 is on every fresh machine.
APT_PACKAGES=(curl socat iproute2 tcpdump g++ netcat-openbsd redis-server redis-tools nginx-light iperf3 python3-scapy openssl)
if [ "${#APT_PACKAGES[@]}" -gt 0 ] && [ "$(id -u)" = 0 ]; then
    step "apt-get install ${APT_PACKAGES[*]}"
    missing=()
    for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    if [ "${#missing[@]}" -gt 0 ]; then
        # redis-server, nginx and iperf3 ship services: tell their install
        # scripts not to start them (policy-rc.d exit 101, the Debian way),
        # since the tests start their own copies and a container may have no
        # init. A policy file already in place is left alone.
        policy=/usr/sbin/policy-rc.d
        made_policy=
        if [ ! -e "$policy" ]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
        fi
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
        if [ -n "$made_policy" ]; then rm -f "$policy"; fi
    fi
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

step "tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast --failure-output final
    # nextest does not run doctests
    cargo test --workspace --locked --doc
else
    cargo test --workspace --locked --no-fail-fast
fi

step "fuzz smoke (3 s per target; scripts/fuzz.sh [SECONDS] for real runs)"
scripts/fuzz.sh 3

step "plebnet demo (the README's first command, short)"
cargo run --locked --quiet --bin plebnet -- demo --size 16
