#!/usr/bin/env bash
# Validates every example's rules in a throwaway network namespace (nothing touches the host's
# firewall): `iptables-restore --test` and `nft -c -f` for each file, then each ruleset is
# really loaded with its lab overlay (which refers to the base ruleset's chains). With
# binaries (LABELFLOW_BIN or target/debug), also `--check-config` of every probe.toml and
# collector.toml. Needs root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ "$(id -u)" -eq 0 ] || { echo "needs root (network namespace)" >&2; exit 1; }
ns="lfexcheck$$"
ip netns add "$ns"
trap 'ip netns del "$ns"' EXIT
in_ns() { ip netns exec "$ns" "$@"; }
fail=0
for dir in "$here"/*/; do
    name=$(basename "$dir")
    [ -f "$dir/rules.iptables" ] || continue
    if in_ns iptables-restore --test <"$dir/rules.iptables" &&
       in_ns iptables-restore <"$dir/rules.iptables" &&
       { [ ! -f "$dir/lab-overlay.iptables" ] || in_ns iptables-restore --noflush <"$dir/lab-overlay.iptables"; }; then
        echo "$name: rules.iptables ok"
    else
        echo "$name: rules.iptables FAILED"; fail=1
    fi
    in_ns iptables-restore <<<$'*filter\nCOMMIT\n*mangle\nCOMMIT\n'
    if in_ns nft -c -f "$dir/rules.nft" && in_ns nft -f "$dir/rules.nft" &&
       { [ ! -f "$dir/lab-overlay.nft" ] || in_ns nft -f "$dir/lab-overlay.nft"; }; then
        echo "$name: rules.nft ok"
    else
        echo "$name: rules.nft FAILED"; fail=1
    fi
    in_ns nft flush ruleset
    # Variants (rules-VARIANT.iptables / .nft, e.g. ipsec-gateway's rules-libipsec): loaded alone.
    for f in "$dir"/rules-*.iptables "$dir"/rules-*.nft; do
        [ -f "$f" ] || continue
        case $f in
            *.iptables) in_ns iptables-restore --test <"$f" && in_ns iptables-restore <"$f" ;;
            *.nft) in_ns nft -c -f "$f" && in_ns nft -f "$f" ;;
        esac && echo "$name: $(basename "$f") ok" || { echo "$name: $(basename "$f") FAILED"; fail=1; }
        in_ns iptables-restore <<<$'*filter\nCOMMIT\n*mangle\nCOMMIT\n'
        in_ns nft flush ruleset
    done
done
bin=${LABELFLOW_BIN:-${CARGO_TARGET_DIR:-$here/../target}/debug}
if [ -x "$bin/labelflow-probe" ] && [ -x "$bin/labelflow-collector" ]; then
    # A binary that accepts a bad file proves nothing about the good ones.
    bad=$(mktemp /tmp/labelflow-bad.XXXXXX.toml)
    echo 'no_such_key = 1' >"$bad"
    for b in labelflow-probe labelflow-collector; do
        if "$bin/$b" --config "$bad" --check-config >/dev/null 2>&1; then
            echo "$bin/$b accepted an invalid configuration: not a working build"; fail=1
        fi
    done
    rm -f "$bad"
    for dir in "$here"/*/; do
        name=$(basename "$dir")
        [ -f "$dir/probe.toml" ] || continue
        "$bin/labelflow-probe" --config "$dir/probe.toml" --check-config >/dev/null &&
            echo "$name: probe.toml ok" || { echo "$name: probe.toml FAILED"; fail=1; }
        "$bin/labelflow-collector" --config "$dir/collector.toml" --check-config >/dev/null &&
            echo "$name: collector.toml ok" || { echo "$name: collector.toml FAILED"; fail=1; }
    done
else
    echo "(no binaries in $bin: configuration files not checked)"
fi
exit $fail
