#!/usr/bin/env bash
# Print the path of a working promtool (Prometheus's config and rule checker), installing it if
# it is missing.
#
# Usage: deploy/observability/promtool.sh [--no-install]
#
# Looks, in order, at $PROMTOOL, `promtool` on PATH (Debian's `prometheus` package provides
# /usr/bin/promtool: `apt-get install -y --no-install-recommends prometheus`) and
# $STEPBUS_HOME/bin/promtool (default .stepbus/bin/promtool). When none runs, it builds promtool
# with Go from the Go module proxy into $STEPBUS_HOME/bin (a few minutes and about 1 GiB of
# module cache the first time), unless --no-install is given. Exits 1, saying what to install,
# when it can neither find nor build one.
set -euo pipefail

# Go module version of github.com/prometheus/prometheus: v0.316.0 is Prometheus v3.16.0.
PROMTOOL_MODULE_VERSION=v0.316.0

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin_dir="${STEPBUS_HOME:-$repo/.stepbus}/bin"

install=1
case "${1:-}" in
    "") ;;
    --no-install) install=0 ;;
    *) echo "usage: $0 [--no-install]" >&2; exit 2 ;;
esac

works() { [[ -n "$1" && -x "$1" ]] && "$1" --version >/dev/null 2>&1; }

for candidate in "${PROMTOOL:-}" "$(command -v promtool || true)" "$bin_dir/promtool"; do
    if works "$candidate"; then
        echo "$candidate"
        exit 0
    fi
done

if ((install)) && command -v go >/dev/null; then
    mkdir -p "$bin_dir"
    log="$bin_dir/promtool-install.log"
    echo "promtool: building promtool $PROMTOOL_MODULE_VERSION into $bin_dir (log: $log)" >&2
    if GOBIN="$bin_dir" GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false \
        go install "github.com/prometheus/prometheus/cmd/promtool@$PROMTOOL_MODULE_VERSION" \
        >"$log" 2>&1 && works "$bin_dir/promtool"; then
        echo "$bin_dir/promtool"
        exit 0
    fi
    echo "promtool: the build failed; the end of $log:" >&2
    tail -n 20 "$log" >&2
fi

echo "promtool: not found; install Debian's prometheus package" \
    "(apt-get install -y --no-install-recommends prometheus) or Go, then run $0" >&2
exit 1
