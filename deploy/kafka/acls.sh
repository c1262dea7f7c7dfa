#!/usr/bin/env bash
# Least-privilege Kafka ACLs for the stepbus principals: who may read and write each topic of
# the catalog (libs/contracts/src/stepbus_contracts/topics.py) and join which consumer groups.
# The reasons for every binding, and the trust model they enforce, are in docs/security.md.
#
# Usage: deploy/kafka/acls.sh [--list | --remove] [--dry-run] [options]
#
# Without --list or --remove it adds the ACLs (idempotent: adding an existing ACL changes
# nothing). --remove deletes exactly the ACLs this script adds (--allow-create's included),
# nothing else of the principals. --list shows every ACL of the stepbus principals.
# --dry-run prints the commands instead of running them. Kafka 4.x: the tool is
# bin/kafka-acls.sh of a distribution (org.apache.kafka.tools.AclCommand); no cluster ACL is
# needed for the idempotent producer (Write on a topic authorizes it since Kafka 3.0).
#
# Options:
#   --bootstrap-server HOST:PORT  the cluster (default: $KAFKA_BOOTSTRAP_SERVERS)
#   --command-config FILE         the admin client's properties (SASL/TLS); its principal must
#                                 be allowed to alter ACLs (Alter on the cluster, or super user)
#   --prefix PREFIX               topic prefix (default: $STEPBUS_TOPIC_PREFIX or "stepbus.")
#   --planner PRINCIPAL           default User:stepbus-planner
#   --tool-executor PRINCIPAL     default User:stepbus-tool-executor
#   --gateway PRINCIPAL           default User:stepbus-gateway
#   --memory PRINCIPAL            default User:stepbus-memory
#   --critic PRINCIPAL            default User:stepbus-critic
#   --upstream PRINCIPAL          default User:stepbus-upstream (systems that publish tasks and
#                                 consume results)
#   --operator PRINCIPAL          default User:stepbus-operator (python -m stepbus_runtime.redrive)
#                                 An empty PRINCIPAL leaves that role out.
#   --only ROLE[,ROLE...]         only these roles: planner, tool-executor, gateway, memory,
#                                 critic, upstream, operator (e.g. a second upstream: --only
#                                 upstream --upstream X)
#   --planner-group-id ID         as STEPBUS_PLANNER_GROUP_ID (default stepbus-planner; the group
#                                 is <prefix><id>)
#   --tool-executor-group-id ID   as STEPBUS_TOOL_EXECUTOR_GROUP_ID (default stepbus-tool-executor)
#   --memory-group-id ID          as STEPBUS_MEMORY_GROUP_ID (default stepbus-memory)
#   --critic-group-id ID          as STEPBUS_CRITIC_GROUP_ID (default stepbus-critic)
#   --upstream-group-prefix P     consumer groups upstream systems may use (prefixed; default
#                                 <prefix>upstream-)
#   --allow-create                also let the services and the operator create the catalog's
#                                 topics (Create on topics under the prefix). Production
#                                 pre-creates the topics and grants no Create.
#   --kafka-acls PATH             Kafka's kafka-acls.sh
#   --classpath CP                or run org.apache.kafka.tools.AclCommand with java from these
#                                 jars. Without either: kafka-acls.sh or kafka-acls on PATH, else
#                                 $KAFKA_HOME/bin/kafka-acls.sh, else the jars that
#                                 'deploy/kafka/authz-broker.sh fetch' puts in
#                                 $STEPBUS_HOME/kafka-tools-jars (deploy/kafka/pom.xml)
#   --dry-run                     print the commands, one per line, shell-quoted; run nothing
#   -h, --help                    this text
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
STEPBUS_HOME="${STEPBUS_HOME:-$REPO/.stepbus}"

# The topic catalog (suffixes), in the order of topics.py; tests/unit/test_acls.py keeps the
# two in step.
CATALOG=(tasks planner.history planner.snapshots tool.calls tool.ledger tool.catalog
    memory.requests memory.items memory.sessions critic.requests results audit dlq dlq.redriven
    payloads)
ROLES=(planner tool-executor gateway memory critic upstream operator)

die() {
    echo "acls.sh: $*" >&2
    exit 1
}

usage() {
    sed -n '2,/^set -euo pipefail$/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}

ACTION=add
DRY_RUN=0
ALLOW_CREATE=0
BOOTSTRAP="${KAFKA_BOOTSTRAP_SERVERS:-}"
COMMAND_CONFIG=""
PREFIX="${STEPBUS_TOPIC_PREFIX-stepbus.}"
declare -A PRINCIPAL=(
    [planner]="User:stepbus-planner"
    [tool-executor]="User:stepbus-tool-executor"
    [gateway]="User:stepbus-gateway"
    [memory]="User:stepbus-memory"
    [critic]="User:stepbus-critic"
    [upstream]="User:stepbus-upstream"
    [operator]="User:stepbus-operator"
)
ONLY=""
PLANNER_GROUP_ID=stepbus-planner
TOOL_EXECUTOR_GROUP_ID=stepbus-tool-executor
MEMORY_GROUP_ID=stepbus-memory
CRITIC_GROUP_ID=stepbus-critic
UPSTREAM_GROUP_PREFIX=""
KAFKA_ACLS=""
CLASSPATH_JARS=""

need_value() {
    (($2 >= 2)) || die "$1 needs a value (see --help)"
}

while (($#)); do
    case "$1" in
        --list) ACTION=list ;;
        --remove) ACTION=remove ;;
        --dry-run) DRY_RUN=1 ;;
        --allow-create) ALLOW_CREATE=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        --bootstrap-server | --command-config | --prefix | --planner | --tool-executor | \
            --gateway | --memory | --critic | --upstream | --operator | --only | \
            --planner-group-id | --tool-executor-group-id | --memory-group-id | \
            --critic-group-id | --upstream-group-prefix | --kafka-acls | --classpath)
            need_value "$1" "$#"
            case "$1" in
                --bootstrap-server) BOOTSTRAP="$2" ;;
                --command-config) COMMAND_CONFIG="$2" ;;
                --prefix) PREFIX="$2" ;;
                --planner | --tool-executor | --gateway | --memory | --critic | --upstream | \
                    --operator)
                    PRINCIPAL[${1#--}]="$2"
                    ;;
                --only) ONLY="$2" ;;
                --planner-group-id) PLANNER_GROUP_ID="$2" ;;
                --tool-executor-group-id) TOOL_EXECUTOR_GROUP_ID="$2" ;;
                --memory-group-id) MEMORY_GROUP_ID="$2" ;;
                --critic-group-id) CRITIC_GROUP_ID="$2" ;;
                --upstream-group-prefix) UPSTREAM_GROUP_PREFIX="$2" ;;
                --kafka-acls) KAFKA_ACLS="$2" ;;
                --classpath) CLASSPATH_JARS="$2" ;;
            esac
            shift
            ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
done

UPSTREAM_GROUP_PREFIX="${UPSTREAM_GROUP_PREFIX:-${PREFIX}upstream-}"

[[ -n "$BOOTSTRAP" ]] || die "--bootstrap-server is required (or set KAFKA_BOOTSTRAP_SERVERS)"
if [[ -n "$COMMAND_CONFIG" && $DRY_RUN == 0 && ! -r "$COMMAND_CONFIG" ]]; then
    die "cannot read the command config '$COMMAND_CONFIG'"
fi
[[ "$PREFIX" =~ ^[A-Za-z0-9._-]*$ ]] \
    || die "the prefix '$PREFIX' has characters Kafka topic names cannot hold"
if ((ALLOW_CREATE)) && [[ -z "$PREFIX" ]]; then
    die "--allow-create needs a non-empty prefix: it grants Create on topics under it"
fi

declare -A SELECTED=()
if [[ -n "$ONLY" ]]; then
    IFS=, read -ra only_roles <<<"$ONLY"
    for role in "${only_roles[@]}"; do
        [[ -v "PRINCIPAL[$role]" ]] \
            || die "unknown role '$role' in --only (roles: ${ROLES[*]})"
        SELECTED[$role]=1
    done
else
    for role in "${ROLES[@]}"; do SELECTED[$role]=1; done
fi
for role in "${ROLES[@]}"; do
    principal="${PRINCIPAL[$role]}"
    if [[ -z "$principal" ]]; then
        unset "SELECTED[$role]"
    elif [[ ! "$principal" =~ ^[A-Za-z]+:.+ ]]; then
        die "the $role principal '$principal' is not of the form Type:name (e.g. User:stepbus-$role)"
    fi
done
((${#SELECTED[@]})) || die "no role selected"

# The ACL tool: a Kafka distribution's kafka-acls.sh, or AclCommand from the jars.
TOOL=()
resolve_tool() {
    if [[ -n "$KAFKA_ACLS" ]]; then
        TOOL=("$KAFKA_ACLS")
    elif [[ -n "$CLASSPATH_JARS" ]]; then
        # A short-lived client: the quick JIT tier and the serial GC start it fastest.
        TOOL=(java -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -cp "$CLASSPATH_JARS"
            org.apache.kafka.tools.AclCommand)
    elif command -v kafka-acls.sh >/dev/null 2>&1; then
        TOOL=(kafka-acls.sh)
    elif command -v kafka-acls >/dev/null 2>&1; then
        TOOL=(kafka-acls)
    elif [[ -n "${KAFKA_HOME:-}" && -x "$KAFKA_HOME/bin/kafka-acls.sh" ]]; then
        TOOL=("$KAFKA_HOME/bin/kafka-acls.sh")
    elif compgen -G "$STEPBUS_HOME/kafka-tools-jars/kafka-tools-*.jar" >/dev/null; then
        TOOL=(java -XX:TieredStopAtLevel=1 -XX:+UseSerialGC
            -cp "$STEPBUS_HOME/kafka-tools-jars/*" org.apache.kafka.tools.AclCommand)
    elif ((DRY_RUN)); then
        TOOL=(kafka-acls.sh)
    else
        die "no kafka-acls.sh found: pass --kafka-acls PATH, set KAFKA_HOME, or fetch Kafka's tools with 'deploy/kafka/authz-broker.sh fetch'"
    fi
}
resolve_tool

COMMON=(--bootstrap-server "$BOOTSTRAP")
[[ -n "$COMMAND_CONFIG" ]] && COMMON+=(--command-config "$COMMAND_CONFIG")

run() {
    if ((DRY_RUN)); then
        local quoted
        printf -v quoted '%q ' "$@"
        echo "${quoted% }"
    else
        "$@"
    fi
}

# acl ROLE PATTERN OPERATION RESOURCE...: one kafka-acls invocation granting OPERATION to the
# role's principal on every RESOURCE (topic:<suffix>, group:<name>); PATTERN is literal or
# prefixed.
acl() {
    local role="$1" pattern="$2" operation="$3"
    shift 3
    local resources=() resource
    for resource in "$@"; do
        case "$resource" in
            topic:*) resources+=(--topic "$PREFIX${resource#topic:}") ;;
            group:*) resources+=(--group "${resource#group:}") ;;
            *) die "internal: unknown resource '$resource'" ;;
        esac
    done
    local action=(--add)
    [[ "$ACTION" == remove ]] && action=(--remove --force)
    run "${TOOL[@]}" "${COMMON[@]}" "${action[@]}" --allow-principal "${PRINCIPAL[$role]}" \
        --resource-pattern-type "$pattern" --operation "$operation" "${resources[@]}"
}

ALL_TOPICS=("${CATALOG[@]/#/topic:}")

# What each role does, read from the code (docs/security.md has the table and the reasons).
# Read and Write imply Describe on a topic; the services' Describe on every catalog topic is
# for ensure_topics, which lists and describes them all at startup.
grant_planner() {
    acl planner literal Read topic:tasks topic:planner.history topic:planner.snapshots \
        topic:tool.catalog topic:payloads "group:$PREFIX$PLANNER_GROUP_ID"
    # memory.requests: the recall asked for before a task's first step; critic.requests: the
    # critiques of drafts and of reviewed tool calls.
    # audit: the outcomes of approvals.
    acl planner literal Write topic:planner.history topic:planner.snapshots topic:tool.calls \
        topic:memory.requests topic:critic.requests topic:results topic:audit topic:dlq \
        topic:payloads
    acl planner literal Describe "${ALL_TOPICS[@]}"
}

grant_tool_executor() {
    acl tool-executor literal Read topic:tool.calls topic:tool.ledger topic:payloads \
        "group:$PREFIX$TOOL_EXECUTOR_GROUP_ID"
    # memory.requests: the facts the remember tool stores; audit: its policy decisions and
    # flagged tool outputs.
    acl tool-executor literal Write topic:planner.history topic:tool.ledger topic:tool.catalog \
        topic:memory.requests topic:audit topic:dlq topic:payloads
    acl tool-executor literal Describe "${ALL_TOPICS[@]}"
}

grant_gateway() {
    acl gateway literal Read topic:results topic:payloads
    # One results-feed group per replica: <prefix>gateway-<instance>.
    acl gateway prefixed Read "group:${PREFIX}gateway-"
    # The DLQ: the results feed dead-letters what it cannot apply.
    acl gateway literal Write topic:tasks topic:dlq topic:payloads
    acl gateway literal Describe "${ALL_TOPICS[@]}"
}

grant_memory() {
    # Its processors consume memory.requests (group <id>: recalls, facts), and tasks
    # (documents, forget requests) and results (completed tasks) (group <id>-store); memory.items and memory.sessions, its journal, are read without a
    # group to rebuild Redis and reindex Qdrant.
    acl memory literal Read topic:memory.requests topic:tasks topic:results topic:payloads \
        topic:memory.items topic:memory.sessions "group:$PREFIX$MEMORY_GROUP_ID" \
        "group:$PREFIX$MEMORY_GROUP_ID-store"
    # planner.history: its stepbus.memory.recalled answers, on the task's journal.
    acl memory literal Write topic:planner.history topic:memory.items topic:memory.sessions \
        topic:dlq topic:payloads
    acl memory literal Describe "${ALL_TOPICS[@]}"
}

grant_critic() {
    # One processor, one group: critic.requests; payloads for claim-checked drafts.
    acl critic literal Read topic:critic.requests topic:payloads "group:$PREFIX$CRITIC_GROUP_ID"
    # planner.history: its stepbus.critique.completed / failed verdicts, on the task's journal.
    acl critic literal Write topic:planner.history topic:dlq topic:payloads
    acl critic literal Describe "${ALL_TOPICS[@]}"
}

grant_upstream() {
    acl upstream literal Read topic:results topic:payloads
    acl upstream prefixed Read "group:$UPSTREAM_GROUP_PREFIX"
    acl upstream literal Write topic:tasks
}

grant_operator() {
    # The re-drive reads the DLQ and its markers without a group, re-publishes dead letters
    # to the topics a processor consumes (planner: tasks, planner.history; tool-executor:
    # tool.calls; the gateway's results feed: results; memory: memory.requests, tasks,
    # results; critic: critic.requests) and writes its markers.
    # audit: the operator (or an auditor with its principal) reads the audit trail.
    acl operator literal Read topic:dlq topic:dlq.redriven topic:audit
    acl operator literal Write topic:tasks topic:planner.history topic:tool.calls \
        topic:memory.requests topic:critic.requests topic:results topic:dlq.redriven
    acl operator literal Describe "${ALL_TOPICS[@]}"
}

grant_create() {
    local role
    for role in planner tool-executor gateway memory critic operator; do
        [[ -v "SELECTED[$role]" ]] || continue
        acl "$role" prefixed Create "topic:"
    done
}

case "$ACTION" in
    list)
        principals=()
        for role in "${ROLES[@]}"; do
            [[ -v "SELECTED[$role]" ]] && principals+=(--principal "${PRINCIPAL[$role]}")
        done
        run "${TOOL[@]}" "${COMMON[@]}" --list "${principals[@]}"
        ;;
    add | remove)
        for role in "${ROLES[@]}"; do
            [[ -v "SELECTED[$role]" ]] || continue
            case "$role" in
                planner) grant_planner ;;
                tool-executor) grant_tool_executor ;;
                gateway) grant_gateway ;;
                memory) grant_memory ;;
                critic) grant_critic ;;
                upstream) grant_upstream ;;
                operator) grant_operator ;;
            esac
        done
        # --remove also removes what --allow-create added; removing an absent ACL is a no-op.
        if ((ALLOW_CREATE)) || [[ "$ACTION" == remove ]]; then
            grant_create
        fi
        ;;
esac
exit 0
