#!/usr/bin/env bash
# Install code-server (the browser VSCode that @interactive_pytorch starts on rank 0)
# into a project-local prefix, reproducibly and without GitHub downloads:
#   * from the npm registry at a pinned version (4.100.3: the last release on Node 20);
#   * its native modules need Debian's libkrb5-dev; @vscode/ripgrep's postinstall would
#     fetch rg from GitHub, so Debian's ripgrep binary is pre-seeded into the cache it
#     looks in first.
# Idempotent: a matching install is kept; apt runs only when a package is missing.
# Without npm it says so and exits 0 (the code-server tests then skip, naming why).
#
# Usage: scripts/install_code_server.sh [PREFIX]   (default: .tools/code-server)
set -euo pipefail

VERSION="${CODE_SERVER_VERSION:-4.100.3}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="${1:-${FI_DIST_CODE_SERVER_PREFIX:-$ROOT/.tools/code-server}}"
BIN="$PREFIX/node_modules/.bin/code-server"
PKG_JSON="$PREFIX/node_modules/code-server/package.json"

if [ -x "$BIN" ] && [ -f "$PKG_JSON" ] && grep -q "\"version\": \"$VERSION\"" "$PKG_JSON"; then
    echo "code-server $VERSION already installed in $PREFIX"
    exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
    echo "install_code_server.sh: npm not found; code-server is not installed" \
         "(the code-server tests will be skipped)" >&2
    exit 0
fi

# --- Debian packages: libkrb5-dev (native module headers), ripgrep (rg binary) -------
bash "$(dirname "${BASH_SOURCE[0]}")/apt_install.sh" install_code_server.sh libkrb5-dev ripgrep

# --- pre-seed @vscode/ripgrep's download cache with Debian's rg ----------------------
# @vscode/ripgrep 1.15.11 looks for this archive before downloading from GitHub.
TMP_BASE="${TMPDIR:-/tmp}"
case "$(uname -m)" in
    x86_64) RG_TARGET="x86_64-unknown-linux-musl" ;;
    aarch64) RG_TARGET="aarch64-unknown-linux-gnu" ;;
    *) RG_TARGET="" ;;
esac
if [ -n "$RG_TARGET" ]; then
    CACHE="$TMP_BASE/vscode-ripgrep-cache-1.15.11"
    ARCHIVE="$CACHE/ripgrep-v13.0.0-10-$RG_TARGET.tar.gz"
    if [ ! -s "$ARCHIVE" ]; then
        RG="$(command -v rg)"
        mkdir -p "$CACHE"
        STAGE="$(mktemp -d)"
        cp "$RG" "$STAGE/rg"
        tar -C "$STAGE" -czf "$ARCHIVE" rg
        rm -rf "$STAGE"
    fi
fi

# --- npm install at the pinned version ------------------------------------------------
mkdir -p "$PREFIX"
[ -f "$PREFIX/package.json" ] || echo '{"name": "fi-dist-tools", "private": true}' > "$PREFIX/package.json"
echo "installing code-server $VERSION from npm into $PREFIX"
# unsafe_perm: code-server's postinstall refuses to run as root otherwise;
# yes: node-pty's build runs `npx node-gyp`, which would prompt.
npm_config_unsafe_perm=true npm_config_yes=true \
    npm install --prefix "$PREFIX" --no-audit --no-fund --loglevel=error "code-server@$VERSION"
"$BIN" --version
