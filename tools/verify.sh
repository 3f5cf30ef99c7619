#!/usr/bin/env bash
# The concurrency-verification ladder beyond CI (STYLE habit 9): the loom model with more
# preemptions than CI allows, and ThreadSanitizer over the real-thread tests of the swap
# buffer and the whole pipeline, and Miri over the swap buffer. Slow (minutes); run by hand
# before changing engine/src/ring/ or shell/src/pipeline.rs. Needs the nightly toolchain
# (installed beside stable here).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== loom, LOOM_MAX_PREEMPTIONS=4"
RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=4 CARGO_TARGET_DIR=target/loom \
  cargo test -p tickstock-engine --release --test loom_swap

echo "== ThreadSanitizer: swap buffer and mfbuf under real threads, the pipeline end to end"
export TSAN_OPTIONS="suppressions=$PWD/tools/tsan.supp halt_on_error=1"
export RUSTFLAGS="-Zsanitizer=thread -Cunsafe-allow-abi-mismatch=sanitizer"
export CARGO_TARGET_DIR=target/tsan
cargo +nightly test -p tickstock-engine --target x86_64-unknown-linux-gnu --test swap_threads
cargo +nightly test -p tickstock-shell --target x86_64-unknown-linux-gnu --test pipeline_e2e

echo "== Miri: the swap buffer's unsafe code (and mfbuf over it) under real threads"
unset RUSTFLAGS CARGO_TARGET_DIR TSAN_OPTIONS
rustup component add --toolchain nightly miri rust-src >/dev/null 2>&1 || true
MIRIFLAGS="-Zmiri-disable-isolation" cargo +nightly miri test -p tickstock-engine --test swap_threads
