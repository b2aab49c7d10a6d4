#!/usr/bin/env bash
# Pack fi-dist's VSCode extension (fi_dist/editor/extension) into fi_dist/editor/fi-dist.vsix,
# which ships inside the Python package (package data) and installs offline into the
# code-server fi-dist starts and into desktop VSCode (`fi-dist vscode install`).
# @vscode/vsce comes from node-tools/ at the version its lockfile pins (npm ci, once).
# Idempotent: a .vsix newer than every source file is kept.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$ROOT/fi_dist/editor/extension"
OUT="$ROOT/fi_dist/editor/fi-dist.vsix"

if [ -f "$OUT" ] && [ -z "$(find "$SRC" -newer "$OUT" -type f | head -1)" ]; then
    echo "fi-dist extension up to date: $OUT"
    exit 0
fi
bash "$ROOT/scripts/install_node_tools.sh"
cd "$SRC"
"$ROOT/node-tools/node_modules/.bin/vsce" package --no-dependencies \
    --allow-missing-repository --out "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "built $OUT"
