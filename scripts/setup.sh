#!/usr/bin/env bash
# Installs what corestream needs on a fresh Debian machine, only when it is missing:
# the C libraries of its -sys crates (hwloc, udev, clang for bindgen) and pkg-config, and
# iproute2 (`ip`) for the test across network namespaces.
# Crates come through cargo. Safe to run repeatedly.
set -euo pipefail

packages=(libclang-dev libhwloc-dev libudev-dev pkg-config iproute2)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}" >&2
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo is not installed; install a Rust toolchain (https://rustup.rs) and retry" >&2
  exit 1
fi
