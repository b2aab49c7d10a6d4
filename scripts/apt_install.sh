#!/usr/bin/env bash
# Install the Debian packages among PKG... that are not installed yet (apt-get; sudo when
# not root). The install scripts share it. Exits 1, naming CALLER, when apt cannot run.
#
# Usage: scripts/apt_install.sh CALLER PKG...
set -euo pipefail

caller=$1
shift
missing=()
for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "$caller: need ${missing[*]} but apt-get is not available" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "$caller: need ${missing[*]}; not root and no sudo" >&2
        exit 1
    fi
    SUDO="sudo"
fi
echo "installing ${missing[*]} with apt-get"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
