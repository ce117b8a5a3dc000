#!/usr/bin/env bash
# Installs the system packages kvr's build, tests and benchmarks need, only if missing.
# Debian/Ubuntu (apt-get); needs root or passwordless sudo on a fresh machine.
set -euo pipefail

need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v g++ >/dev/null 2>&1 || need+=(g++)
command -v make >/dev/null 2>&1 || need+=(make)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v fio >/dev/null 2>&1 || need+=(fio)
have_pkg libgtest-dev || need+=(libgtest-dev)
have_pkg libssl-dev || need+=(libssl-dev) # SHA-256 (libcrypto) for the llama.cpp integration's block keys
command -v openssl >/dev/null 2>&1 || need+=(openssl) # the https object-tier test makes its certificate with it

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
echo "install-deps: installing ${need[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
