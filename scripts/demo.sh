#!/usr/bin/env bash
# Create a local repository, back up a directory, list snapshots, restore and verify the restore.
# Usage: scripts/demo.sh [PATH]   (default: the project's docs/). Re-running adds a new snapshot.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
src=$(cd "${1:-$here/docs}" && pwd)
work="${CERMIN_DEMO_DIR:-$here/demo-repo}"
mkdir -p "$work"
export CERMIN_REPOSITORY="$work/repo" CERMIN_PASSWORD_FILE="$work/password"
if [ ! -s "$CERMIN_PASSWORD_FILE" ]; then
  (umask 077; head -c 24 /dev/urandom | base64 > "$CERMIN_PASSWORD_FILE")
fi
[ -f "$CERMIN_REPOSITORY/config" ] || cermin init
cermin backup "$src"
cermin snapshots
rm -rf "$work/restore"
cermin restore latest --target "$work/restore" --verify
diff -r --no-dereference "$src" "$work/restore$src"
echo
echo "restore of $src verified byte-identical"
echo "repository: $CERMIN_REPOSITORY (password file: $CERMIN_PASSWORD_FILE)"
