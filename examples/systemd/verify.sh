#!/usr/bin/env bash
# Checks the example units with `systemd-analyze verify`, honestly: verify fails when an
# ExecStart binary is missing, so the units are checked inside a throwaway root that holds
# the real, freshly built binaries at the paths the units name (/usr/local/bin), the
# distribution's own units (for the targets they refer to) and these unit files.
#
# Usage: examples/systemd/verify.sh     (LABELFLOW_BIN=DIR to use already built binaries)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
command -v systemd-analyze >/dev/null || { echo "systemd-analyze missing (apt-get install systemd)" >&2; exit 1; }

bin=${LABELFLOW_BIN:-${CARGO_TARGET_DIR:-$root/target}/debug}
if [ -z "${LABELFLOW_BIN:-}" ]; then
    (cd "$root" && cargo build --quiet -p labelflow-probe -p labelflow-collector --bins)
fi

# The throwaway root lives beside the binaries so they are hard-linked, not copied (a debug
# binary is over 100 MB and /tmp may be small); cp is the fallback across filesystems.
tmp=$(mktemp -d "$bin/../labelflow-units.XXXXXX" 2>/dev/null || mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/usr/local/bin" "$tmp/usr/lib/systemd" "$tmp/etc/systemd/system"
for b in labelflow-probe labelflow-collector; do
    [ -x "$bin/$b" ] || { echo "$bin/$b is missing" >&2; exit 1; }
    ln "$bin/$b" "$tmp/usr/local/bin/$b" 2>/dev/null || cp "$bin/$b" "$tmp/usr/local/bin/$b"
done
cp -a /usr/lib/systemd/system "$tmp/usr/lib/systemd/"
units=()
for u in "$here"/*.service; do
    cp "$u" "$tmp/etc/systemd/system/"
    units+=("/etc/systemd/system/${u##*/}")
done
systemd-analyze verify --root="$tmp" "${units[@]}"
echo "systemd units: OK (${units[*]##*/})"
