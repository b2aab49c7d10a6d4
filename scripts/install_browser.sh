#!/usr/bin/env bash
# The browser test's browser: Debian's chromium (apt), driven by playwright-core from
# node-tools/ (never a browser download of playwright's own). Idempotent: apt runs only
# when chromium is missing.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser.sh: /usr/bin/chromium is missing and apt-get is not available" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "installing chromium with apt-get"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium
