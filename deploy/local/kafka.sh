#!/usr/bin/env bash
# A single-node Apache Kafka (KRaft, broker+controller) for local development and the tests,
# run from the jars that deploy/local/pom.xml pins; no Docker.
#
# Usage: deploy/local/kafka.sh fetch|start|stop|kill9|status|reset
#
# Environment:
#   STEPBUS_HOME             state directory (default: <repo>/.stepbus)
#   KAFKA_BOOTSTRAP_SERVERS  host:port of the PLAINTEXT listener (default 127.0.0.1:9092;
#                            only the first entry of a list is used)
#   KAFKA_CONTROLLER_PORT    port of the CONTROLLER listener (default: broker port + 1)
#   KAFKA_HEAP_OPTS          JVM heap options (default: -Xms256m -Xmx768m)
#   KAFKA_START_TIMEOUT      seconds to wait for readiness (default 60)
#   KAFKA_STOP_TIMEOUT       seconds to wait after SIGTERM before SIGKILL (default 20)
#   KAFKA_READY_PROBE        force the readiness probe: kcat or log (default: aiokafka when a
#                            Python with aiokafka is found, else kcat, else the log line)
#   STEPBUS_PYTHON           Python to try first for the aiokafka probe
#
# `status` exits 0 when the broker runs and 3 when it does not.
set -euo pipefail

NAME=kafka
MARKER='kafka\.Kafka'  # in the command line of the process this script runs
# shellcheck source=deploy/local/process.sh
source "$(dirname "${BASH_SOURCE[0]}")/process.sh"

POM="$HERE/pom.xml"
LOG4J_CONFIG="$HERE/log4j2.properties"

JARS="$STEPBUS_HOME/kafka-jars"
KAFKA_DIR="$STEPBUS_HOME/kafka"
DATA_DIR="$KAFKA_DIR/data"
PROPS="$KAFKA_DIR/server.properties"
FORMATTED_FOR="$KAFKA_DIR/formatted-for"
CONSOLE_LOG="$LOG_DIR/kafka.log"
SERVER_LOG="$LOG_DIR/kafka-server.log"
STAMP="$JARS/.pom.sha256"

BOOTSTRAP="${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:9092}"
BOOTSTRAP="${BOOTSTRAP%%,*}"
BOOTSTRAP="${BOOTSTRAP#PLAINTEXT://}"
HOST="${BOOTSTRAP%:*}"
PORT="${BOOTSTRAP##*:}"
CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-$((PORT + 1))}"
ADVERTISED_HOST="$HOST"
[[ "$HOST" == "0.0.0.0" ]] && ADVERTISED_HOST="127.0.0.1"
CONNECT_HOST="$ADVERTISED_HOST"



require_java() {
    command -v java >/dev/null 2>&1 \
        || die "Java 17 is required: apt-get install -y openjdk-17-jre-headless"
    local version major
    version="$(java -version 2>&1 | sed -n 's/.* version "\([^"]*\)".*/\1/p' | head -n1)"
    major="${version%%.*}"
    [[ "$major" == "1" ]] && major="$(echo "$version" | cut -d. -f2)"
    if [[ ! "$major" =~ ^[0-9]+$ ]] || ((major < 17)); then
        die "Java 17 or newer is required (found '${version:-unknown}'): apt-get install -y openjdk-17-jre-headless"
    fi
}

require_mvn() {
    command -v mvn >/dev/null 2>&1 \
        || die "Maven is required to fetch the Kafka jars: apt-get install -y maven"
}

pom_sha() {
    sha256sum "$POM" | cut -d' ' -f1
}

jars_fresh() {
    [[ -f "$STAMP" && "$(cat "$STAMP")" == "$(pom_sha)" ]]
}

cmd_fetch() {
    require_java
    if jars_fresh; then
        return 0
    fi
    require_mvn
    say "resolving the jars pinned by $POM into $JARS"
    local tmp="$JARS.tmp.$$"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    if ! mvn -q -B -f "$POM" dependency:copy-dependencies \
        -DoutputDirectory="$tmp" -DincludeScope=runtime; then
        rm -rf "$tmp"
        die "mvn could not resolve the Kafka jars (network or ~/.m2 problem; see the output above)"
    fi
    pom_sha >"$tmp/.pom.sha256"
    rm -rf "$JARS"
    mv "$tmp" "$JARS"
}

port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

java_run() {
    java -cp "$JARS/*" -Dlog4j2.configurationFile="$LOG4J_CONFIG" \
        -Dkafka.logs.dir="$LOG_DIR" "$@"
}

write_properties() {
    mkdir -p "$KAFKA_DIR" "$DATA_DIR"
    cat >"$PROPS" <<EOF
# Written by deploy/local/kafka.sh on every start; edit the script, not this file.
process.roles=broker,controller
node.id=1
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$ADVERTISED_HOST:$PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
controller.quorum.bootstrap.servers=$ADVERTISED_HOST:$CONTROLLER_PORT
log.dirs=$DATA_DIR

# One node: every internal topic has a single replica.
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=12
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=12
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1

# Fast tests: no rebalance delay; topics are created explicitly, never by a typo.
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
num.partitions=6

# A restart after SIGKILL (the chaos test) waits for the old registration's session to expire
# before the broker can register again; 9 s by default, 4 s here.
broker.session.timeout.ms=4000
broker.heartbeat.interval.ms=1000

# Local disk use: small segments, one day or 1 GiB per partition.
log.segment.bytes=67108864
log.retention.hours=24
log.retention.bytes=1073741824
log.retention.check.interval.ms=60000
num.recovery.threads.per.data.dir=2
EOF
}

format_once() {
    local endpoint="controller=$ADVERTISED_HOST:$CONTROLLER_PORT"
    if [[ -f "$DATA_DIR/meta.properties" ]]; then
        # The standalone (dynamic) quorum records the controller endpoint at format time.
        if [[ -f "$FORMATTED_FOR" && "$(cat "$FORMATTED_FOR")" != "$endpoint" ]]; then
            die "the Kafka data in $DATA_DIR was formatted for $(cat "$FORMATTED_FOR"), not $endpoint; run 'deploy/local/kafka.sh reset' for a fresh cluster"
        fi
        return 0
    fi
    local cluster_id
    cluster_id="$(java_run kafka.tools.StorageTool random-uuid | tail -n1)"
    say "formatting $DATA_DIR (cluster id $cluster_id)"
    java_run kafka.tools.StorageTool format --standalone -t "$cluster_id" -c "$PROPS" >/dev/null
    echo "$endpoint" >"$FORMATTED_FOR"
}

# Byte offsets of the two logs when this start began, so failures show only this run's lines.
SERVER_LOG_OFFSET=0
CONSOLE_LOG_OFFSET=0

print_tail() {
    local file offset lines
    for file in "$SERVER_LOG" "$CONSOLE_LOG"; do
        offset="$SERVER_LOG_OFFSET"
        [[ "$file" == "$CONSOLE_LOG" ]] && offset="$CONSOLE_LOG_OFFSET"
        [[ -s "$file" ]] || continue
        lines="$(tail -c "+$((offset + 1))" "$file" | tail -n 30)"
        if [[ -n "$lines" ]]; then
            echo "--- last 30 lines of $file ---" >&2
            echo "$lines" >&2
        fi
    done
}

# Picks the strongest readiness probe available: a metadata request through aiokafka,
# else `kcat -L`, else the listener being open plus the broker's "started" log line.
PROBE_PYTHON=""
PROBE=""
choose_probe() {
    local candidate
    case "${KAFKA_READY_PROBE:-}" in
        kcat | log)
            PROBE="$KAFKA_READY_PROBE"
            return 0
            ;;
    esac
    for candidate in "${STEPBUS_PYTHON:-}" "$REPO/.venv/bin/python" python3; do
        [[ -n "$candidate" ]] || continue
        if command -v "$candidate" >/dev/null 2>&1 \
            && "$candidate" -c 'import aiokafka' >/dev/null 2>&1; then
            PROBE_PYTHON="$candidate"
            PROBE=aiokafka
            return 0
        fi
    done
    if command -v kcat >/dev/null 2>&1; then
        PROBE=kcat
    else
        PROBE=log
    fi
}

AIOKAFKA_PROBE='
import asyncio, sys
from aiokafka.client import AIOKafkaClient

async def main():
    client = AIOKafkaClient(bootstrap_servers=sys.argv[1], request_timeout_ms=3000)
    try:
        await asyncio.wait_for(client.bootstrap(), 5)
        return bool(client.cluster.brokers())
    finally:
        await client.close()

try:
    sys.exit(0 if asyncio.run(main()) else 1)
except Exception:
    sys.exit(1)
'

broker_ready() {
    port_open "$CONNECT_HOST" "$PORT" || return 1
    case "$PROBE" in
        aiokafka)
            "$PROBE_PYTHON" -c "$AIOKAFKA_PROBE" "$CONNECT_HOST:$PORT" >/dev/null 2>&1
            ;;
        kcat)
            kcat -L -b "$CONNECT_HOST:$PORT" -m 3 2>/dev/null | grep -Eq '^ *[1-9][0-9]* brokers:'
            ;;
        *)
            tail -c "+$((SERVER_LOG_OFFSET + 1))" "$SERVER_LOG" 2>/dev/null \
                | grep -q 'Kafka Server started'
            ;;
    esac
}

wait_ready() {
    local pid="$1"
    local timeout="${KAFKA_START_TIMEOUT:-60}"
    local deadline=$((SECONDS + timeout))
    choose_probe
    until broker_ready; do
        if gone "$pid"; then
            print_tail
            rm -f "$PID_FILE"
            die "Kafka exited during startup (logs above, full logs in $LOG_DIR)"
        fi
        if ((SECONDS >= deadline)); then
            print_tail
            die "Kafka was not ready on $CONNECT_HOST:$PORT after ${timeout}s (pid $pid still running; 'deploy/local/kafka.sh stop' to stop it)"
        fi
        sleep 0.25
    done
}

cmd_start() {
    local pid
    if pid="$(live_pid)"; then
        wait_ready "$pid"
        say "already running (pid $pid) on $CONNECT_HOST:$PORT"
        return 0
    fi
    rm -f "$PID_FILE"
    cmd_fetch
    if port_open "$CONNECT_HOST" "$PORT" || port_open "$CONNECT_HOST" "$CONTROLLER_PORT"; then
        die "something else already listens on $CONNECT_HOST:$PORT or :$CONTROLLER_PORT (not the stepbus Kafka); stop it or set KAFKA_BOOTSTRAP_SERVERS"
    fi
    mkdir -p "$LOG_DIR" "$RUN_DIR"
    write_properties
    format_once

    local started=$SECONDS
    [[ -f "$SERVER_LOG" ]] && SERVER_LOG_OFFSET="$(stat -c %s "$SERVER_LOG")"
    [[ -f "$CONSOLE_LOG" ]] && CONSOLE_LOG_OFFSET="$(stat -c %s "$CONSOLE_LOG")"
    echo "=== kafka.sh start $(date -Is) ===" >>"$CONSOLE_LOG"
    # In its own session so a Ctrl-C in the terminal that ran `make up` does not reach it.
    # shellcheck disable=SC2086  # KAFKA_HEAP_OPTS is a list of JVM options.
    (
        cd "$KAFKA_DIR"
        exec setsid java ${KAFKA_HEAP_OPTS:--Xms256m -Xmx768m} \
            -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
            -cp "$JARS/*" -Dlog4j2.configurationFile="$LOG4J_CONFIG" \
            -Dkafka.logs.dir="$LOG_DIR" \
            kafka.Kafka "$PROPS"
    ) </dev/null >>"$CONSOLE_LOG" 2>&1 9>&- &
    pid=$!
    echo "$pid" >"$PID_FILE"
    wait_ready "$pid"
    say "ready (pid $pid) on $CONNECT_HOST:$PORT in $((SECONDS - started))s (probe: $PROBE)"
}


cmd_stop() {
    local pid
    if ! pid="$(live_pid)"; then
        rm -f "$PID_FILE"
        say "not running"
        return 0
    fi
    stop_pid "$pid" "${KAFKA_STOP_TIMEOUT:-20}"
}

cmd_kill9() {
    local pid
    if ! pid="$(live_pid)"; then
        rm -f "$PID_FILE"
        say "not running"
        return 0
    fi
    kill9_pid "$pid"
}

cmd_status() {
    local pid
    if pid="$(live_pid)"; then
        say "running (pid $pid) on $CONNECT_HOST:$PORT, data in $DATA_DIR"
        return 0
    fi
    say "stopped"
    return 3
}

cmd_reset() {
    cmd_stop
    rm -rf "$DATA_DIR" "$FORMATTED_FOR"
    say "data deleted; the next start formats a fresh cluster"
}

[[ "${1:-}" == "status" ]] || lock 180
case "${1:-}" in
    fetch) cmd_fetch ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    kill9) cmd_kill9 ;;
    status) cmd_status ;;
    reset) cmd_reset ;;
    *)
        echo "usage: $0 fetch|start|stop|kill9|status|reset" >&2
        exit 2
        ;;
esac
