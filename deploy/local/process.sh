# Shared by kafka.sh and redis.sh (sourced, not run): paths, messages and stopping a pid.
# The sourcing script defines NAME (for messages and file names) and MARKER (a regex matching
# the command line of its process) before sourcing this file.

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
STEPBUS_HOME="${STEPBUS_HOME:-$REPO/.stepbus}"
LOG_DIR="$STEPBUS_HOME/logs"
RUN_DIR="$STEPBUS_HOME/run"
PID_FILE="$RUN_DIR/$NAME.pid"

die() {
    echo "stepbus: $*" >&2
    exit 1
}

say() {
    echo "$NAME: $*"
}

# Prints the pid when the pid file names a live process of ours; fails otherwise.
live_pid() {
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid="$(cat "$PID_FILE")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    # A zombie or a reused pid has a different (or empty) command line.
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "$MARKER" || return 1
    echo "$pid"
}

# True once the process has exited (a zombie counts as exited).
gone() {
    ! kill -0 "$1" 2>/dev/null \
        || [[ "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)" == "Z" ]]
}

# wait_gone PID SECONDS: wait until PID is no longer the live process of the pid file.
wait_gone() {
    local pid="$1" seconds="$2"
    local deadline=$((SECONDS + seconds))
    while live_pid >/dev/null && kill -0 "$pid" 2>/dev/null; do
        ((SECONDS >= deadline)) && return 1
        sleep 0.1
    done
}

# stop_pid PID TIMEOUT: SIGTERM, then SIGKILL after TIMEOUT seconds; removes the pid file.
stop_pid() {
    local pid="$1" timeout="$2"
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_gone "$pid" "$timeout"; then
        say "pid $pid ignored SIGTERM for ${timeout}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone "$pid" 5 || die "pid $pid survived SIGKILL"
    fi
    rm -f "$PID_FILE"
    say "stopped (pid $pid)"
}

# kill9_pid PID: SIGKILL (the chaos tests' crash), wait until gone, remove the pid file.
kill9_pid() {
    kill -KILL "$1" 2>/dev/null || true
    wait_gone "$1" 5 || die "pid $1 survived SIGKILL"
    rm -f "$PID_FILE"
    say "killed (pid $1, SIGKILL)"
}

# lock SECONDS: serialise concurrent callers (parallel test workers, `make up` twice) on this
# STEPBUS_HOME; needs RUN_DIR.
lock() {
    mkdir -p "$RUN_DIR"
    command -v flock >/dev/null 2>&1 || return 0
    exec 9>"$RUN_DIR/$NAME.lock"
    flock -w "$1" 9 || die "another $NAME.sh holds $RUN_DIR/$NAME.lock"
}
