#!/usr/bin/env bash
# The C ABI's tests: builds libshadowbucket (debug profile), compiles each C test in ffi/tests/c
# with gcc -Wall -Wextra -Werror and AddressSanitizer + UndefinedBehaviorSanitizer (the C++ one
# with g++), links each against the static and against the shared library, and runs them, each in
# a fresh directory; then checks that the measurement programs in scripts/ compile. Exits
# non-zero when any of them fails. Usage: scripts/test-c.sh
set -euo pipefail
cd "$(dirname "$0")/.."

CC=${CC:-gcc}
CXX=${CXX:-g++}
target_dir=${CARGO_TARGET_DIR:-target}
lib_dir="$(cd "$target_dir" 2>/dev/null && pwd || echo "$PWD/$target_dir")/debug"

echo "== C ABI: building libshadowbucket (debug)"
cargo build --quiet -p shadowbucket-ffi

work=$(mktemp -d "${TMPDIR:-/tmp}/sb-c-tests.XXXXXX")
trap 'rm -rf "$work"' EXIT

sanitize=(-g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all)
warn=(-Wall -Wextra -Werror)
# What a Rust static library needs from the system on Linux (rustc --print native-static-libs).
static_libs=("$lib_dir/libshadowbucket.a" -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc)
shared_libs=(-L"$lib_dir" -lshadowbucket -Wl,-rpath,"$lib_dir" -lpthread -lm)

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:halt_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

failed=0
run() { # name binary
  local name=$1 bin=$2 dir
  dir=$(mktemp -d "$work/run.XXXXXX")
  if "$bin" "$dir"; then
    echo "   pass  $name"
  else
    echo "   FAIL  $name (exit $?)"
    failed=1
  fi
}

for src in ffi/tests/c/*.c ffi/tests/c/*.cpp; do
  name=$(basename "${src%.*}")
  case "$src" in
    *.cpp) compiler=("$CXX" -std=c++17) ;;
    *) compiler=("$CC" -std=c11 -D_DEFAULT_SOURCE) ;;
  esac
  for kind in static shared; do
    bin="$work/$name-$kind"
    if [ "$kind" = static ]; then libs=("${static_libs[@]}"); else libs=("${shared_libs[@]}"); fi
    "${compiler[@]}" "${warn[@]}" "${sanitize[@]}" -Iinclude -Iffi/tests/c "$src" -o "$bin" "${libs[@]}"
    run "$name ($kind)" "$bin"
  done
done

# The measurement programs the README quotes (memory floors and bandwidth) must keep compiling
# cleanly; they are not run here (each takes seconds and hundreds of MB).
echo "== measurement programs (compile only)"
for src in scripts/*.c; do
  if "$CC" -O2 -pthread "${warn[@]}" "$src" -o "$work/$(basename "${src%.c}")"; then
    echo "   pass  $src compiles"
  else
    echo "   FAIL  $src does not compile"
    failed=1
  fi
done

if [ "$failed" -ne 0 ]; then
  echo "C ABI tests FAILED"
  exit 1
fi
echo "C ABI tests passed"
