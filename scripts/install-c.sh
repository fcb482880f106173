#!/usr/bin/env bash
# Builds libshadowbucket in release mode and installs it for C and C++ services:
#   PREFIX/lib/libshadowbucket.so, PREFIX/lib/libshadowbucket.a, PREFIX/include/shadowbucket.h,
#   PREFIX/lib/pkgconfig/shadowbucket.pc
# Usage: scripts/install-c.sh PREFIX   (e.g. /usr/local, or $HOME/.local)
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: $0 PREFIX" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
mkdir -p "$1"
prefix=$(cd "$1" && pwd)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
target_dir=${CARGO_TARGET_DIR:-target}

cargo build --release -p shadowbucket-ffi
install -d "$prefix/lib/pkgconfig" "$prefix/include"
install -m 0755 "$target_dir/release/libshadowbucket.so" "$prefix/lib/"
install -m 0644 "$target_dir/release/libshadowbucket.a" "$prefix/lib/"
install -m 0644 include/shadowbucket.h "$prefix/include/"
sed -e "s|@PREFIX@|$prefix|g" -e "s|@VERSION@|$version|g" ffi/shadowbucket.pc.in \
  > "$prefix/lib/pkgconfig/shadowbucket.pc"
echo "installed libshadowbucket $version under $prefix"
echo "  PKG_CONFIG_PATH=$prefix/lib/pkgconfig pkg-config --cflags --libs shadowbucket"
