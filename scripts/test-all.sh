#!/usr/bin/env bash
# Runs every test of the project: the Rust unit, integration, property and doc tests, a short run of
# the main job on the built-in workload, then the C ABI's C and C++ tests (scripts/test-c.sh).
# Usage: scripts/test-all.sh
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== GPU: Mesa's software Vulkan (llvmpipe) for the GPU tests, where it can be installed"
scripts/gpu-setup.sh

echo "== Rust: unit, integration and property tests"
cargo test --workspace --lib --bins --tests

echo "== Rust: doc tests"
cargo test --workspace --doc

echo "== main job on a small built-in workload (shadowbucket simulate)"
cargo run --quiet -p shadowbucket-cli -- simulate --customers 500 --days 0.1 --quiet \
    --report target/test-all-simulate.html

echo "== C ABI: C and C++ tests under AddressSanitizer (scripts/test-c.sh)"
scripts/test-c.sh

echo "== Python package: build, stubtest, pytest"
scripts/test-python.sh -q
