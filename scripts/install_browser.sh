#!/usr/bin/env bash
# The browser test's browser: Debian's chromium (apt), driven by playwright-core from
# node-tools/ (never a browser download of playwright's own). Idempotent: apt runs only
# when chromium is missing.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    exit 0
fi
bash "$(dirname "${BASH_SOURCE[0]}")/apt_install.sh" install_browser.sh chromium
