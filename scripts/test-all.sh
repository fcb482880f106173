#!/usr/bin/env bash
# Runs every test of the project: the Rust unit, integration, property and doc tests, and a short
# run of the main job on the built-in workload. Usage: scripts/test-all.sh
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== GPU: Mesa's software Vulkan (llvmpipe) for the GPU tests, where it can be installed"
scripts/gpu-setup.sh

echo "== Rust: unit, integration and property tests"
cargo test --workspace --lib --bins --tests

echo "== Rust: doc tests"
cargo test --workspace --doc

echo "== main job on a small built-in workload"
cargo run --quiet --example replay -- 500 5 3
