"""Check the ACLs of ``acls.sh`` on the throwaway broker of ``authz-broker.sh``.

Run by ``deploy/kafka/authz-broker.sh check``; by hand::

    uv run --frozen python deploy/kafka/verify_acls.py --admin 127.0.0.1:19092 \\
        --sasl 127.0.0.1:19094 --password stepbus --listing acls.txt
    uv run --frozen python deploy/kafka/verify_acls.py ... --create-as stepbus-planner

With ``--listing`` (the output of ``acls.sh --list``) it checks two things against the tables
of ``docs/security.md``:

1. the listing holds exactly the documented bindings;
2. each principal, using stepbus's own clients (``ensure_topics``, the idempotent
   ``EventPublisher``, ``read_to_end``, consumer groups, claim-checked events), can do what
   the tables say and nothing else, and a service without Create cannot create a missing
   topic.

With ``--create-as USER`` it checks that ``ensure_topics`` run as USER creates a missing topic
(after ``acls.sh --allow-create``). Principals are the broker's SASL/PLAIN users
``stepbus-<role>``. The probes write records to every topic: never point this at a cluster
that runs stepbus.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    TopicAuthorizationFailedError,
)
from stepbus_contracts import (
    CloudEvent,
    MemoryRecalled,
    MemoryRecalledData,
    MemoryTurn,
    TaskCompleted,
    TaskCompletedData,
    Topics,
)
from stepbus_runtime import (
    Emit,
    EventPublisher,
    PayloadStore,
    ensure_topics,
    read_to_end,
    topic_partitions,
)

REPO = Path(__file__).resolve().parents[2]
DESCRIBE_ALL = ("planner", "tool-executor", "gateway", "memory", "critic", "operator")
"""Roles with Describe on every catalog topic (docs/security.md: they run ensure_topics)."""
STRANGER = "stranger"
"""The role of a broker user with no ACLs at all (``stepbus-stranger``)."""
TIMEOUT = 15.0
"""Seconds any one probe may take."""
START_REFUSED = (PermissionError, TimeoutError)
"""How ``ensure_topics`` fails a principal: a creation the broker refused (a topic it may not
create, or may not describe and so takes for missing), or topics it never sees led."""

Binding = tuple[str, str, str, str, str]
"""(principal, resource type, resource name, pattern type, operation), as Kafka lists them."""


# -- what docs/security.md says ------------------------------------------------------------


def _rows(doc: str, header: str) -> list[list[str]]:
    """The body rows of the markdown table whose header row starts with ``header``."""
    lines = doc.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip().strip("`") for cell in line.strip("|").split("|")])
    return rows


def documented(doc: str, prefix: str) -> tuple[list[str], dict[str, dict[str, str]], list[Any]]:
    """The roles, each topic's access per role (``"R"``, ``"W"``, ``"RW"`` or ``""``) by
    suffix, and the groups as (name, pattern, role), under ``prefix``."""
    header = next(line for line in doc.splitlines() if line.startswith("| topic | planner"))
    roles = [cell.strip() for cell in header.strip("|").split("|")][1:-1]
    access: dict[str, dict[str, str]] = {}
    for row in _rows(doc, "| topic | planner"):
        suffix = row[0].removeprefix("stepbus.")
        access[suffix] = {
            role: "".join(op for op in "RW" if op in cell)
            for role, cell in zip(roles, row[1:], strict=False)
        }
    groups = [
        (prefix + row[0].removeprefix("stepbus."), row[1], row[2])
        for row in _rows(doc, "| consumer group | pattern | principal")
    ]
    return roles, access, groups


def expected_bindings(doc: str, prefix: str) -> set[Binding]:
    """Every ACL the documented tables imply."""
    roles, access, groups = documented(doc, prefix)
    bindings: set[Binding] = set()
    for suffix, per_role in access.items():
        for role, ops in per_role.items():
            for op, name in (("R", "READ"), ("W", "WRITE")):
                if op in ops:
                    bindings.add(
                        (f"User:stepbus-{role}", "TOPIC", prefix + suffix, "LITERAL", name)
                    )
            if role in DESCRIBE_ALL:
                bindings.add(
                    (f"User:stepbus-{role}", "TOPIC", prefix + suffix, "LITERAL", "DESCRIBE")
                )
    for name, pattern, role in groups:
        bindings.add((f"User:stepbus-{role}", "GROUP", name, pattern.upper(), "READ"))
    assert set(roles) >= set(DESCRIBE_ALL)
    return bindings


_RESOURCE = re.compile(r"resourceType=(\w+), name=(.*?), patternType=(\w+)\)")
_ENTRY = re.compile(r"\(principal=(.*?), host=(.*?), operation=(\w+), permissionType=(\w+)\)")


def listed_bindings(listing: str) -> set[Binding]:
    """The ACLs in the output of ``kafka-acls.sh --list``."""
    bindings: set[Binding] = set()
    resource: tuple[str, str, str] | None = None
    for line in listing.splitlines():
        if match := _RESOURCE.search(line):
            resource = (match[1], match[2], match[3])
        elif (match := _ENTRY.search(line)) and resource is not None:
            if match[2] != "*" or match[4] != "ALLOW":
                raise AssertionError(f"unexpected ACL entry: {line.strip()}")
            bindings.add((match[1], *resource, match[3]))
    return bindings


# -- acting as a principal -------------------------------------------------------------------

_principal: tuple[str, str] | None = None
_client_init = AIOKafkaClient.__init__


def _init(self: AIOKafkaClient, *args: Any, **kwargs: Any) -> None:
    # The services' clients read one set of STEPBUS_KAFKA_* settings per process; this probe
    # acts as every principal in turn in one process, so each client built while a principal
    # is set is made to log in as it.
    if _principal is not None:
        kwargs.update(
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="PLAIN",
            sasl_plain_username=_principal[0],
            sasl_plain_password=_principal[1],
        )
    _client_init(self, *args, **kwargs)


AIOKafkaClient.__init__ = _init  # type: ignore[method-assign]


@contextlib.contextmanager
def as_principal(user: str, password: str) -> Iterator[None]:
    """Every Kafka client built inside the block authenticates as ``user``."""
    global _principal
    previous, _principal = _principal, (user, password)
    try:
        yield
    finally:
        _principal = previous


class Probe:
    """The checks of one run: what was expected, what happened."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def expect(self, what: str, allowed: bool, outcome: str) -> None:
        """Record ``outcome`` ("ok", "denied" or an error) against what the tables say."""
        wanted = "ok" if allowed else "denied"
        mark = "ok " if outcome == wanted else "FAIL"
        print(f"  [{mark}] {what}: {outcome} (expected {wanted})")
        if outcome != wanted:
            self.failures.append(f"{what}: {outcome}, expected {wanted}")


async def _outcome(coro: Any, denied: tuple[type[BaseException], ...]) -> str:
    try:
        await asyncio.wait_for(coro, TIMEOUT)
    except denied:
        return "denied"
    except Exception as exc:
        return f"error {type(exc).__name__}: {exc}"
    return "ok"


async def _read(sasl: str, topic: str) -> None:
    """Read partition 0 from its beginning to its end without a group, as state loads do.

    The partitions are described first, as the readers do (``topic_partitions``): a topic the
    principal may not even describe is refused there (aiokafka's consumer would wait on its
    metadata instead of failing).
    """
    if not await topic_partitions(sasl, topic):
        raise TopicAuthorizationFailedError(topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=sasl, enable_auto_commit=False)
    try:
        await consumer.start()
        records = await read_to_end(consumer, [TopicPartition(topic, 0)])
        if not records:
            raise RuntimeError(f"read nothing from {topic}[0], which holds a seed record")
    finally:
        await consumer.stop()


async def _join(sasl: str, group: str, topic: str) -> None:
    """Join ``group`` on ``topic`` (static membership, as the gateway does) and commit."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=sasl,
        group_id=group,
        group_instance_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    try:
        await consumer.start()
        await consumer.getmany(timeout_ms=2000)
        await consumer.commit()
    finally:
        await consumer.stop()


async def _topic_names(admin_bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=admin_bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def _delete_topic(admin_bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=admin_bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()
    for _ in range(100):
        if topic not in await _topic_names(admin_bootstrap):
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{topic} was not deleted")


async def check_principals(
    admin: str, sasl: str, password: str, doc: str, prefix: str, probe: Probe
) -> None:
    """Act as every principal and compare what works with the tables."""
    topics = Topics(prefix)
    roles, access, groups = documented(doc, prefix)
    await ensure_topics(admin, topics)
    seeder = EventPublisher(admin, "verify-acls-seed")
    await seeder.start()
    try:
        for name, _ in topics.specs():
            await seeder.send_raw(name, b"seed", b"seed", [], partition=0)
    finally:
        await seeder.stop()

    for role in [*roles, STRANGER]:
        user = f"stepbus-{role}"
        print(f"{user}:")
        with as_principal(user, password):
            await ensure_topics_probe(sasl, topics, role in DESCRIBE_ALL, probe, user)
            await write_probes(sasl, role, user, access, topics, probe)
            for suffix, per_role in access.items():
                name = topics.name(suffix)
                outcome = await _outcome(_read(sasl, name), (TopicAuthorizationFailedError,))
                probe.expect(f"{user} reads {name}", "R" in per_role.get(role, ""), outcome)
            readable = [s for s, per_role in access.items() if "R" in per_role.get(role, "")]
            if not readable:
                continue
            for name, pattern, owner in groups:
                group = f"{name}verify" if pattern == "prefixed" else name
                topic = topics.name(readable[0])
                outcome = await _outcome(
                    _join(sasl, group, topic), (GroupAuthorizationFailedError,)
                )
                probe.expect(f"{user} joins group {group}", owner == role, outcome)

    await check_claim_check(sasl, password, topics, probe)
    await check_no_create(admin, sasl, password, topics, probe)


async def write_probes(
    sasl: str,
    role: str,
    user: str,
    access: dict[str, dict[str, str]],
    topics: Topics,
    probe: Probe,
) -> None:
    """Write one record to every topic with the idempotent publisher every service uses."""
    publisher = EventPublisher(sasl, f"verify-acls-{role}")
    try:
        await publisher.start()
    except ClusterAuthorizationFailedError:
        # InitProducerId: allowed by Write on any topic (or the deprecated IdempotentWrite).
        print(f"  {user} cannot start an idempotent producer (no Write on any topic)")
        for suffix, per_role in access.items():
            allowed = "W" in per_role.get(role, "")
            probe.expect(f"{user} writes {topics.name(suffix)}", allowed, "denied")
        await publisher.stop()
        return
    try:
        for suffix, per_role in access.items():
            name = topics.name(suffix)
            send = publisher.send_raw(name, b"probe", user.encode(), [], partition=0)
            outcome = await _outcome(send, (TopicAuthorizationFailedError,))
            probe.expect(f"{user} writes {name}", "W" in per_role.get(role, ""), outcome)
    finally:
        await publisher.stop()


async def ensure_topics_probe(
    sasl: str, topics: Topics, allowed: bool, probe: Probe, user: str
) -> None:
    """``ensure_topics`` (every service's startup) works with Describe on every topic."""
    outcome = await _outcome(
        ensure_topics(sasl, topics, wait_seconds=2 if not allowed else 10), START_REFUSED
    )
    probe.expect(f"{user} runs ensure_topics (topics exist)", allowed, outcome)


async def check_claim_check(sasl: str, password: str, topics: Topics, probe: Probe) -> None:
    """Big events are stored in ``payloads`` by their writer and resolved by their readers: a
    result of the planner (read by the gateway, upstream and the memory service), a recall
    answer of the memory service (read by the planner)."""
    print("claim check:")
    result = TaskCompleted(
        subject="verify-acls-claim",
        data=TaskCompletedData(output="x" * 4096, steps=1, input="What is 17 * 23?"),
    )
    readers = ("stepbus-gateway", "stepbus-upstream", "stepbus-memory")
    await _claim_checked(
        sasl, password, probe, topics, topics.results, result, "stepbus-planner", readers
    )
    turn = MemoryTurn(role="user", content="y" * 4096, task_id="task-41", at=result.time)
    recalled = MemoryRecalled(
        subject="verify-acls-recall", data=MemoryRecalledData(status="recalled", turns=[turn])
    )
    await _claim_checked(
        sasl,
        password,
        probe,
        topics,
        topics.planner_history,
        recalled,
        "stepbus-memory",
        ("stepbus-planner",),
    )


async def _claim_checked(
    sasl: str,
    password: str,
    probe: Probe,
    topics: Topics,
    topic: str,
    event: CloudEvent,
    writer: str,
    readers: tuple[str, ...],
) -> None:
    """``writer`` publishes ``event`` claim-checked to ``topic``; each reader finds the claim
    there and resolves it."""
    with as_principal(writer, password):
        publisher = EventPublisher(
            sasl, "verify-acls-claim", payloads_topic=topics.payloads, claim_check_threshold=1024
        )
        await publisher.start()
        try:
            outcome = await _outcome(publisher.publish([Emit(topic, event)]), ())
        finally:
            await publisher.stop()
        probe.expect(f"{writer} publishes a claim-checked {event.type} to {topic}", True, outcome)
    for user in readers:
        with as_principal(user, password):
            outcome = await _outcome(_resolve_claim(sasl, topics, topic, event), ())
            probe.expect(f"{user} resolves the claim of {event.type}", True, outcome)


async def _resolve_claim(sasl: str, topics: Topics, topic: str, event: CloudEvent) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=sasl, enable_auto_commit=False)
    await consumer.start()
    store = PayloadStore(sasl, topics.payloads)
    try:
        records = await read_to_end(consumer, await topic_partitions(sasl, topic))
        claims = [r.value for r in records if r.key == event.subject.encode()]
        if not claims or b'"claimcheck"' not in claims[-1]:
            raise RuntimeError(f"no claim for the big {event.type} on {topic}")
        resolved = await store.resolve(claims[-1])
        if resolved is None or type(event).model_validate_json(resolved).id != event.id:
            raise RuntimeError("the claim resolved to another payload")
    finally:
        await store.stop()
        await consumer.stop()


async def check_no_create(
    admin: str, sasl: str, password: str, topics: Topics, probe: Probe
) -> None:
    """Without Create, a service's ensure_topics cannot create a missing topic."""
    print("missing topic, no Create:")
    await _delete_topic(admin, topics.dlq_redriven)
    with as_principal("stepbus-planner", password):
        outcome = await _outcome(ensure_topics(sasl, topics, wait_seconds=3), START_REFUSED)
    created = topics.dlq_redriven in await _topic_names(admin)
    probe.expect("stepbus-planner creates a missing topic", False, outcome)
    probe.expect(f"{topics.dlq_redriven} exists after that", False, "ok" if created else "denied")
    await ensure_topics(admin, topics)


async def check_create(admin: str, sasl: str, password: str, user: str, prefix: str) -> Probe:
    """With Create on the prefix (``--allow-create``), ``ensure_topics`` creates what is missing."""
    topics = Topics(prefix)
    probe = Probe()
    print(f"missing topic, {user} with Create:")
    await _delete_topic(admin, topics.dlq_redriven)
    with as_principal(user, password):
        outcome = await _outcome(ensure_topics(sasl, topics, wait_seconds=10), ())
    probe.expect(f"{user} creates a missing topic", True, outcome)
    created = topics.dlq_redriven in await _topic_names(admin)
    probe.expect(f"{topics.dlq_redriven} exists after that", True, "ok" if created else "denied")
    return probe


def check_listing(listing: str, doc: str, prefix: str, probe: Probe) -> None:
    """The ACLs on the broker are exactly those the tables imply."""
    expected = expected_bindings(doc, prefix)
    actual = listed_bindings(listing)
    print(f"listing: {len(actual)} ACLs, {len(expected)} documented")
    for binding in sorted(expected - actual):
        probe.failures.append(f"documented but not on the broker: {binding}")
    for binding in sorted(actual - expected):
        probe.failures.append(f"on the broker but not documented: {binding}")


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admin", required=True, help="PLAINTEXT listener of a super user")
    parser.add_argument("--sasl", required=True, help="SASL_PLAINTEXT listener")
    parser.add_argument("--password", required=True, help="password of every SASL user")
    parser.add_argument("--prefix", default="stepbus.", help="topic prefix")
    parser.add_argument("--doc", default=str(REPO / "docs" / "security.md"))
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--listing", help="output of `acls.sh --list`")
    mode.add_argument("--create-as", help="a user granted Create by `acls.sh --allow-create`")
    args = parser.parse_args(argv)
    # The probes report every outcome; aiokafka's own warnings about refusals are noise here.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    doc = Path(args.doc).read_text()
    if args.create_as:
        probe = asyncio.run(
            check_create(args.admin, args.sasl, args.password, args.create_as, args.prefix)
        )
    else:
        probe = Probe()
        check_listing(Path(args.listing).read_text(), doc, args.prefix, probe)
        asyncio.run(check_principals(args.admin, args.sasl, args.password, doc, args.prefix, probe))
    if probe.failures:
        print(f"{len(probe.failures)} check(s) failed:", *probe.failures, sep="\n  ")
        return 1
    print("every check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
