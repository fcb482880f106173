#!/usr/bin/env bash
# Builds the Python package (python/) into a virtual environment and runs its tests: pytest, and
# mypy's stubtest of the typed interface against the built module.
#
# Usage: scripts/test-python.sh [pytest args...]
# SB_VENV picks the virtual environment (default .venv at the repository root; created when
# missing, reused otherwise). The build is maturin's dev profile (debug), into target/.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${SB_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
    echo "== creating the virtual environment $venv"
    if ! python3 -m venv "$venv"; then
        echo "python3 -m venv failed: on Debian/Ubuntu install python3-venv (apt-get install -y python3-venv)" >&2
        exit 1
    fi
fi
venv="$(realpath -m "$venv")"
py="$venv/bin/python"

echo "== installing the build and test tools into $venv"
"$py" -m pip install --quiet --disable-pip-version-check \
    'maturin>=1.9.4,<2' numpy pytest safetensors pandas mypy

echo "== building the package (maturin develop, dev profile)"
(cd python && VIRTUAL_ENV="$venv" "$venv/bin/maturin" develop --quiet)

echo "== stubtest: the .pyi stub against the built module"
(cd python && "$py" -m mypy.stubtest shadowbucket --concise)

echo "== pytest"
cd python
exec "$py" -m pytest "$@"
