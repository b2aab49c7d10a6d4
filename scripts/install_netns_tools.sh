#!/usr/bin/env bash
# The commands `fi-dist run --network netns` and its tests use: `ip` and `tc` (Debian
# iproute2) and `nsenter` (util-linux). Idempotent: apt runs only when one is missing.
# Not root and no sudo: says so and exits 0 (netns then fails with a message naming
# what is missing; loopback, the default, needs none of this).
#
# Usage: scripts/install_netns_tools.sh
set -euo pipefail

PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
missing=()
command -v ip >/dev/null 2>&1 && command -v tc >/dev/null 2>&1 || missing+=(iproute2)
command -v nsenter >/dev/null 2>&1 || missing+=(util-linux)
if [ "${#missing[@]}" -eq 0 ]; then
    echo "netns tools present: $(command -v ip) $(command -v tc) $(command -v nsenter)"
    exit 0
fi
# Without apt or rights: the message, and exit 0 (netns then names what is missing).
bash "$(dirname "${BASH_SOURCE[0]}")/apt_install.sh" install_netns_tools.sh "${missing[@]}" || true
