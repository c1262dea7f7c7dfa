#!/usr/bin/env bash
# A throwaway single-node Kafka (KRaft) with authentication and the StandardAuthorizer, to try
# deploy/kafka/acls.sh for real: nobody but a super user may do anything without an ACL. Runs
# from the jars of deploy/local/pom.xml, on its own ports and data directory; it never touches
# the development broker of deploy/local/kafka.sh.
#
# Usage: deploy/kafka/authz-broker.sh fetch|start|stop|status|check
#
#   fetch   the broker jars (deploy/local/kafka.sh fetch) and Kafka's tools
#           (deploy/kafka/pom.xml: AclCommand) into $STEPBUS_HOME/kafka-tools-jars
#   start   format a fresh cluster and start it
#   stop    stop it and delete its data
#   check   start, apply acls.sh, list the ACLs, probe every principal with the stepbus clients
#           (deploy/kafka/verify_acls.py against docs/security.md), remove the ACLs, stop
#
# Listeners (all on 127.0.0.1):
#   $AUTHZ_KAFKA_PORT      PLAINTEXT, principal User:ANONYMOUS, a super user (default 19092)
#   $AUTHZ_KAFKA_PORT + 1  CONTROLLER
#   $AUTHZ_KAFKA_PORT + 2  SASL_PLAINTEXT with SASL/PLAIN users stepbus-admin (a super user),
#                          stepbus-planner, stepbus-tool-executor, stepbus-gateway,
#                          stepbus-memory, stepbus-critic, stepbus-upstream,
#                          stepbus-operator and stepbus-stranger (no ACLs);
#                          password "stepbus" for all. Client properties for each user are
#                          written to $AUTHZ_KAFKA_DIR/clients/<user>.properties.
#   $AUTHZ_KAFKA_PORT + 3  SASL_SSL: the same users over TLS, with a certificate for 127.0.0.1
#                          from a throwaway CA made at start ($AUTHZ_KAFKA_DIR/tls/ca.crt)
#
# Environment: AUTHZ_KAFKA_PORT, AUTHZ_KAFKA_DIR (default /tmp/stepbus-authz-kafka),
# STEPBUS_HOME (jars; default <repo>/.stepbus), KAFKA_START_TIMEOUT (seconds, default 60).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
STEPBUS_HOME="${STEPBUS_HOME:-$REPO/.stepbus}"
JARS="$STEPBUS_HOME/kafka-jars"
TOOLS_JARS="$STEPBUS_HOME/kafka-tools-jars"

HOST=127.0.0.1
PORT="${AUTHZ_KAFKA_PORT:-19092}"
CONTROLLER_PORT=$((PORT + 1))
SASL_PORT=$((PORT + 2))
SSL_PORT=$((PORT + 3))
DIR="${AUTHZ_KAFKA_DIR:-/tmp/stepbus-authz-kafka}"
PROPS="$DIR/server.properties"
PID_FILE="$DIR/kafka.pid"
PASSWORD=stepbus
USERS=(stepbus-admin stepbus-planner stepbus-tool-executor stepbus-gateway stepbus-memory
    stepbus-critic stepbus-upstream stepbus-operator stepbus-stranger)

die() {
    echo "authz-broker: $*" >&2
    exit 1
}

say() {
    echo "authz-broker: $*"
}

port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null
}

# The broker's pid, when the pid file names a live process started with our properties.
live_pid() {
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid="$(cat "$PID_FILE")"
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "kafka.Kafka $PROPS" || return 1
    echo "$pid"
}

# Deletes the broker's directory, refusing any directory this script did not create.
wipe_dir() {
    [[ -e "$DIR" ]] || return 0
    [[ -f "$DIR/.stepbus-authz-broker" ]] \
        || die "$DIR exists and was not made by this script; set AUTHZ_KAFKA_DIR to another path"
    rm -rf "$DIR"
}

cmd_fetch() {
    bash "$REPO/deploy/local/kafka.sh" fetch
    local stamp="$TOOLS_JARS/.pom.sha256" sha
    sha="$(sha256sum "$HERE/pom.xml" | cut -d' ' -f1)"
    [[ -f "$stamp" && "$(cat "$stamp")" == "$sha" ]] && return 0
    command -v mvn >/dev/null 2>&1 || die "Maven is required to fetch Kafka's tools: apt-get install -y maven"
    say "resolving the jars pinned by $HERE/pom.xml into $TOOLS_JARS"
    local tmp="$TOOLS_JARS.tmp.$$"
    rm -rf "$tmp"
    mvn -q -B -f "$HERE/pom.xml" dependency:copy-dependencies \
        -DoutputDirectory="$tmp" -DincludeScope=runtime \
        || { rm -rf "$tmp"; die "mvn could not resolve Kafka's tools (see the output above)"; }
    echo "$sha" >"$tmp/.pom.sha256"
    rm -rf "$TOOLS_JARS"
    mv "$tmp" "$TOOLS_JARS"
}

# A throwaway CA and the broker's certificate for $HOST (PKCS#12, password $PASSWORD).
write_tls() {
    command -v openssl >/dev/null 2>&1 || die "openssl is required for the TLS listener"
    local tls="$DIR/tls"
    mkdir -p "$tls"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=stepbus-authz-ca" \
        -keyout "$tls/ca.key" -out "$tls/ca.crt" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=$HOST" \
        -keyout "$tls/broker.key" -out "$tls/broker.csr" 2>/dev/null
    printf 'subjectAltName=IP:%s\n' "$HOST" >"$tls/san.ext"
    openssl x509 -req -in "$tls/broker.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" \
        -CAcreateserial -days 2 -extfile "$tls/san.ext" -out "$tls/broker.crt" 2>/dev/null
    openssl pkcs12 -export -in "$tls/broker.crt" -inkey "$tls/broker.key" -name broker \
        -passout "pass:$PASSWORD" -out "$tls/broker.p12"
}

write_config() {
    local users="" user
    for user in "${USERS[@]}"; do users+=" user_$user=\"$PASSWORD\""; done
    mkdir -p "$DIR/data" "$DIR/logs" "$DIR/clients"
    touch "$DIR/.stepbus-authz-broker"
    write_tls
    cat >"$PROPS" <<EOF
# Written by deploy/kafka/authz-broker.sh; a throwaway broker for trying ACLs.
process.roles=broker,controller
node.id=1
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT,SASL_PLAINTEXT://$HOST:$SASL_PORT,SASL_SSL://$HOST:$SSL_PORT
advertised.listeners=PLAINTEXT://$HOST:$PORT,SASL_PLAINTEXT://$HOST:$SASL_PORT,SASL_SSL://$HOST:$SSL_PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
controller.quorum.bootstrap.servers=$HOST:$CONTROLLER_PORT
log.dirs=$DIR/data

# Nothing without an ACL, except for the super users (the broker itself, on PLAINTEXT).
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:ANONYMOUS;User:stepbus-admin
sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required$users;
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required$users;
listener.name.sasl_ssl.ssl.keystore.type=PKCS12
listener.name.sasl_ssl.ssl.keystore.location=$DIR/tls/broker.p12
listener.name.sasl_ssl.ssl.keystore.password=$PASSWORD
listener.name.sasl_ssl.ssl.key.password=$PASSWORD

default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
EOF
    for user in "${USERS[@]}"; do
        cat >"$DIR/clients/$user.properties" <<EOF
security.protocol=SASL_PLAINTEXT
sasl.mechanism=PLAIN
sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="$user" password="$PASSWORD";
EOF
    done
}

java_run() {
    java -cp "$JARS/*" -Dlog4j2.configurationFile="$HERE/log4j2.properties" \
        -Dkafka.logs.dir="$DIR/logs" "$@"
}

cmd_start() {
    local pid
    if pid="$(live_pid)"; then
        say "already running (pid $pid); SASL on $HOST:$SASL_PORT"
        return 0
    fi
    compgen -G "$JARS/kafka_*.jar" >/dev/null || die "no Kafka jars in $JARS: run '$0 fetch'"
    local port
    for port in "$PORT" "$CONTROLLER_PORT" "$SASL_PORT" "$SSL_PORT"; do
        ! port_open "$port" \
            || die "something already listens on $HOST:$port; set AUTHZ_KAFKA_PORT to free ports"
    done
    wipe_dir
    write_config
    local cluster_id
    cluster_id="$(java_run kafka.tools.StorageTool random-uuid | tail -n1)"
    java_run kafka.tools.StorageTool format --standalone -t "$cluster_id" -c "$PROPS" >/dev/null
    (
        cd "$DIR"
        exec setsid java -Xms128m -Xmx512m -XX:+ExitOnOutOfMemoryError \
            -cp "$JARS/*" -Dlog4j2.configurationFile="$HERE/log4j2.properties" \
            -Dkafka.logs.dir="$DIR/logs" kafka.Kafka "$PROPS"
    ) </dev/null >>"$DIR/logs/console.log" 2>&1 &
    pid=$!
    echo "$pid" >"$PID_FILE"
    local deadline=$((SECONDS + ${KAFKA_START_TIMEOUT:-60}))
    until port_open "$SASL_PORT" && port_open "$SSL_PORT" && grep -q 'Kafka Server started' "$DIR/logs/kafka-server.log" 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || {
            tail -n 30 "$DIR/logs/console.log" "$DIR/logs/kafka-server.log" >&2 || true
            die "Kafka exited during startup (logs in $DIR/logs)"
        }
        ((SECONDS < deadline)) || die "Kafka not ready after ${KAFKA_START_TIMEOUT:-60}s (pid $pid; logs in $DIR/logs)"
        sleep 0.2
    done
    say "ready (pid $pid): PLAINTEXT $HOST:$PORT (super user), SASL_PLAINTEXT $HOST:$SASL_PORT, SASL_SSL $HOST:$SSL_PORT (CA $DIR/tls/ca.crt); clients in $DIR/clients"
}

cmd_stop() {
    local pid
    if pid="$(live_pid)"; then
        kill -TERM "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + 20))
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            say "pid $pid ignored SIGTERM for 20s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        say "stopped (pid $pid)"
    fi
    wipe_dir
}

cmd_status() {
    local pid
    if pid="$(live_pid)"; then
        say "running (pid $pid); SASL_PLAINTEXT $HOST:$SASL_PORT, data in $DIR"
        return 0
    fi
    say "stopped"
    return 3
}

cmd_check() {
    cmd_fetch
    cmd_start
    trap cmd_stop EXIT
    local acls=(bash "$HERE/acls.sh" --bootstrap-server "$HOST:$SASL_PORT"
        --command-config "$DIR/clients/stepbus-admin.properties" --classpath "$TOOLS_JARS/*")
    local python=(uv run --frozen --project "$REPO" python "$HERE/verify_acls.py"
        --admin "$HOST:$PORT" --sasl "$HOST:$SASL_PORT" --password "$PASSWORD")
    say "adding the ACLs (twice: the second run must change nothing)"
    "${acls[@]}" >"$DIR/logs/acls-add.log"
    "${acls[@]}" --list >"$DIR/acls-first.txt"
    "${acls[@]}" >>"$DIR/logs/acls-add.log"
    "${acls[@]}" --list >"$DIR/acls.txt"
    cmp -s "$DIR/acls-first.txt" "$DIR/acls.txt" || die "a second run changed the ACLs"
    say "checking the listing and probing every principal"
    "${python[@]}" --listing "$DIR/acls.txt"
    say "checking --allow-create"
    "${acls[@]}" --allow-create --only planner >>"$DIR/logs/acls-add.log"
    "${python[@]}" --create-as stepbus-planner
    say "removing the ACLs"
    "${acls[@]}" --remove >"$DIR/logs/acls-remove.log"
    "${acls[@]}" --list >"$DIR/acls-after-remove.txt"
    if grep -q 'principal=' "$DIR/acls-after-remove.txt"; then
        cat "$DIR/acls-after-remove.txt" >&2
        die "ACLs left after --remove"
    fi
    say "check passed"
}

case "${1:-}" in
    fetch) cmd_fetch ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    check) cmd_check ;;
    *)
        echo "usage: $0 fetch|start|stop|status|check" >&2
        exit 2
        ;;
esac
