#!/usr/bin/env bash
# Installs Mesa's software Vulkan driver (llvmpipe, package mesa-vulkan-drivers) so that the GPU
# tests really run on a machine without a GPU. Quiet and harmless: does nothing when a Vulkan
# driver is already installed, and only says so when it cannot install one (not root, no apt-get,
# no network); the GPU tests then skip loudly (or fail with SB_REQUIRE_GPU=1).
set -u
if ls /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json >/dev/null 2>&1; then
    exit 0
fi
if [ "$(uname -s)" != "Linux" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "gpu-setup: no Vulkan driver found and no apt-get here; GPU tests will skip" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "gpu-setup: not root; install mesa-vulkan-drivers for the GPU tests" >&2
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends \
    mesa-vulkan-drivers; } >/tmp/gpu-setup.log 2>&1; then
    echo "gpu-setup: installing mesa-vulkan-drivers failed (see /tmp/gpu-setup.log); GPU tests will skip" >&2
fi
exit 0
