#!/usr/bin/env bash
# A local Redis for development and the tests: Debian's redis-server in the background, no
# persistence (Redis is a cache in stepbus), no Docker.
#
# Usage: deploy/local/redis.sh start|stop|kill9|status
#
# Environment:
#   STEPBUS_HOME         state directory (default: <repo>/.stepbus)
#   REDIS_URL            redis://[:password@]host[:port][/db] (default redis://127.0.0.1:6379/0);
#                        a password becomes --requirepass
#   REDIS_START_TIMEOUT  seconds to wait for PONG (default 20)
#   REDIS_STOP_TIMEOUT   seconds to wait after SIGTERM before SIGKILL (default 20)
#
# When another Redis (for example the system service that `apt-get install redis-server`
# starts) already answers on that address, `start` uses it and says so; `stop` leaves it alone
# and `kill9` fails, so a chaos test cannot silently miss its target.
# `status` exits 0 when a Redis answers (ours or external) and 3 when none does.
set -euo pipefail

NAME=redis
MARKER='redis-server'  # in the command line of the process this script runs
# shellcheck source=deploy/local/process.sh
source "$(dirname "${BASH_SOURCE[0]}")/process.sh"

DATA_DIR="$STEPBUS_HOME/redis"
LOG_FILE="$LOG_DIR/redis.log"

URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"



[[ "$URL" == redis://* ]] \
    || die "REDIS_URL must look like redis://[:password@]host:port/db for the local Redis (got '$URL')"
REST="${URL#redis://}"
PASSWORD=""
if [[ "$REST" == *@* ]]; then
    AUTH="${REST%%@*}"
    REST="${REST#*@}"
    [[ "$AUTH" == *:* ]] && PASSWORD="${AUTH#*:}"
fi
HOSTPORT="${REST%%/*}"
HOSTPORT="${HOSTPORT%%\?*}"
if [[ "$HOSTPORT" == *:* ]]; then
    HOST="${HOSTPORT%:*}"
    PORT="${HOSTPORT##*:}"
else
    HOST="$HOSTPORT"
    PORT=6379
fi
HOST="${HOST:-127.0.0.1}"
CONNECT_HOST="$HOST"
[[ "$HOST" == "0.0.0.0" ]] && CONNECT_HOST="127.0.0.1"

require_redis() {
    command -v redis-server >/dev/null 2>&1 \
        || die "redis-server is required: apt-get install -y redis-server"
}

port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/$CONNECT_HOST/$PORT" 2>/dev/null
}

# True when a Redis at the configured address answers PING (with the URL's password).
pong() {
    if command -v redis-cli >/dev/null 2>&1; then
        local auth=()
        [[ -n "$PASSWORD" ]] && auth=(--no-auth-warning -a "$PASSWORD")
        [[ "$(timeout 3 redis-cli -h "$CONNECT_HOST" -p "$PORT" "${auth[@]}" ping 2>/dev/null)" == "PONG" ]]
    else
        # RESP by hand: the inline commands AUTH and PING, reading the last reply line.
        timeout 3 bash -c '
            exec 3<>"/dev/tcp/$1/$2" || exit 1
            [[ -n "$3" ]] && printf "AUTH %s\r\n" "$3" >&3 && read -r _ <&3
            printf "PING\r\n" >&3
            read -r reply <&3
            [[ "$reply" == "+PONG"* ]]
        ' _ "$CONNECT_HOST" "$PORT" "$PASSWORD" 2>/dev/null
    fi
}

print_tail() {
    local offset="$1" lines
    [[ -s "$LOG_FILE" ]] || return 0
    lines="$(tail -c "+$((offset + 1))" "$LOG_FILE" | tail -n 30)"
    [[ -n "$lines" ]] || return 0
    echo "--- last 30 lines of $LOG_FILE ---" >&2
    echo "$lines" >&2
}

cmd_start() {
    local pid
    if pid="$(live_pid)"; then
        say "already running (pid $pid) on $CONNECT_HOST:$PORT"
        return 0
    fi
    rm -f "$PID_FILE"
    if port_open; then
        if pong; then
            say "an external Redis already answers on $CONNECT_HOST:$PORT; using it (not managed by stepbus: stop and kill9 leave it alone)"
            return 0
        fi
        die "something that is not Redis (or rejects the password in REDIS_URL) listens on $CONNECT_HOST:$PORT; stop it or set REDIS_URL"
    fi
    require_redis
    mkdir -p "$DATA_DIR" "$LOG_DIR" "$RUN_DIR"

    local started=$SECONDS offset=0
    [[ -f "$LOG_FILE" ]] && offset="$(stat -c %s "$LOG_FILE")"
    echo "=== redis.sh start $(date -Is) ===" >>"$LOG_FILE"
    local args=(--bind "$HOST" --port "$PORT" --save '' --appendonly no
        --dir "$DATA_DIR" --daemonize no --logfile '')
    [[ -n "$PASSWORD" ]] && args+=(--requirepass "$PASSWORD")
    # In its own session so a Ctrl-C in the terminal that ran `make up` does not reach it.
    (exec setsid redis-server "${args[@]}") </dev/null >>"$LOG_FILE" 2>&1 9>&- &
    pid=$!
    echo "$pid" >"$PID_FILE"

    local timeout="${REDIS_START_TIMEOUT:-20}"
    local deadline=$((SECONDS + timeout))
    until pong; do
        if gone "$pid"; then
            print_tail "$offset"
            rm -f "$PID_FILE"
            die "redis-server exited during startup (log above)"
        fi
        if ((SECONDS >= deadline)); then
            print_tail "$offset"
            die "Redis did not answer PING on $CONNECT_HOST:$PORT after ${timeout}s (pid $pid still running; 'deploy/local/redis.sh stop' to stop it)"
        fi
        sleep 0.1
    done
    say "ready (pid $pid) on $CONNECT_HOST:$PORT in $((SECONDS - started))s"
}


cmd_stop() {
    local pid
    if ! pid="$(live_pid)"; then
        rm -f "$PID_FILE"
        say "not running (stepbus-managed)"
        return 0
    fi
    stop_pid "$pid" "${REDIS_STOP_TIMEOUT:-20}"
}

cmd_kill9() {
    local pid
    if ! pid="$(live_pid)"; then
        rm -f "$PID_FILE"
        if port_open; then
            die "the Redis on $CONNECT_HOST:$PORT was not started by stepbus; refusing to kill it"
        fi
        say "not running"
        return 0
    fi
    kill9_pid "$pid"
}

cmd_status() {
    local pid
    if pid="$(live_pid)"; then
        say "running (pid $pid) on $CONNECT_HOST:$PORT"
        return 0
    fi
    if port_open && pong; then
        say "an external Redis answers on $CONNECT_HOST:$PORT (not managed by stepbus)"
        return 0
    fi
    say "stopped"
    return 3
}

[[ "${1:-}" == "status" ]] || lock 60
case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    kill9) cmd_kill9 ;;
    status) cmd_status ;;
    *)
        echo "usage: $0 start|stop|kill9|status" >&2
        exit 2
        ;;
esac
