#!/usr/bin/env bash
# Install fi-dist's npm build and test tools (node-tools/package.json: @vscode/vsce packs the
# VSCode extension, playwright-core drives Debian's chromium in the browser test) at the
# versions node-tools/package-lock.json pins, with `npm ci`. Idempotent: an install that
# matches the lockfile is kept.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/node-tools"
STAMP="$TOOLS/node_modules/.package-lock.json"

if [ -f "$STAMP" ] && [ "$STAMP" -nt "$TOOLS/package-lock.json" ] \
        && [ -x "$TOOLS/node_modules/.bin/vsce" ]; then
    exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
    echo "install_node_tools.sh: npm not found (needed once to build the fi-dist VSCode" \
         "extension and for the browser test)" >&2
    exit 1
fi
echo "installing node-tools (@vscode/vsce, playwright-core) with npm ci"
npm ci --prefix "$TOOLS" --no-audit --no-fund --loglevel=error
touch "$STAMP"
