#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for SECONDS each (default 60), starting
# from its seed corpus in fuzz/corpus/<target>/. Exits non-zero on the first
# crash and prints where the crashing input was saved.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# The fuzzer is libFuzzer (the libfuzzer-sys crate), coverage-guided, on the
# STABLE toolchain: no cargo-fuzz, no nightly, no RUSTC_BOOTSTRAP. We pass
# the SanitizerCoverage flags cargo-fuzz would pass ourselves (-C passes and
# -C llvm-args are stable codegen options) and build no sanitizer: a crash
# is a panic, an abort, or a timeout, not a memory error (plebnet's fuzzed
# crates forbid unsafe code). Needs a C++ compiler to build libFuzzer.
#
# New inputs the fuzzer finds go to target/fuzz/corpus/<target>/, not into
# the committed seeds; crashes go to target/fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET="${1:-60}"
shift || true
TARGETS=("$@")
if [ "${#TARGETS[@]}" -eq 0 ]; then
    TARGETS=(cell_decoder config_parser stack_ingress tunnel_core udp_decap dtls_link)
fi

# The host triple, passed as --target so RUSTFLAGS reach only the target
# code, not build scripts and proc macros (which would not link without
# libFuzzer).
HOST="$(rustc -vV | sed -n 's/^host: //p')"
OUT="$PWD/target/fuzz"
export CARGO_TARGET_DIR="$OUT/build"
export RUSTFLAGS="--cfg fuzzing \
 -Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 -Cdebug-assertions -Coverflow-checks"

echo "==> building fuzz targets (${TARGETS[*]})"
cargo build --manifest-path fuzz/Cargo.toml --locked --release --target "$HOST" \
    $(printf -- '--bin %s ' "${TARGETS[@]}")

for t in "${TARGETS[@]}"; do
    work="$OUT/corpus/$t"
    artifacts="$OUT/artifacts/$t"
    mkdir -p "$work" "$artifacts"
    echo "==> fuzzing $t for ${SECONDS_PER_TARGET}s"
    log="$OUT/$t.log"
    # libFuzzer reads both corpora and writes new inputs to the first.
    if ! "$CARGO_TARGET_DIR/$HOST/release/$t" "$work" "fuzz/corpus/$t" \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=20 -rss_limit_mb=2048 \
        -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1; then
        tail -n 40 "$log"
        echo
        echo "FUZZ FAILURE in $t; crashing input:"
        grep -o "Test unit written to .*" "$log" | sed 's/^Test unit written to /  /' || true
        echo "reproduce: $CARGO_TARGET_DIR/$HOST/release/$t <that file>"
        exit 1
    fi
    runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')"
    cov="$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 || true)"
    echo "    $t: $runs runs, $cov"
done
