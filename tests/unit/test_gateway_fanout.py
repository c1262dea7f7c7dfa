"""The gateway's in-memory fan-out and SSE framing, without Kafka or Redis."""

from __future__ import annotations

import json

from stepbus_contracts import TaskProgress, TaskProgressData
from stepbus_gateway.fanout import Subscribers
from stepbus_gateway.sse import KEEP_ALIVE, frame


def _progress(task_id: str, tenant: str = "acme") -> TaskProgress:
    return TaskProgress(
        subject=task_id,
        tenant=tenant,
        data=TaskProgressData(step=0, stage="thought", message="line one\nline two"),
    )


def test_events_reach_only_subscribers_of_their_tenant_and_task() -> None:
    subscribers = Subscribers()
    with (
        subscribers.subscribe("acme", "t1") as mine,
        subscribers.subscribe("globex", "t1") as other_tenant,
        subscribers.subscribe("acme", "t2") as other_task,
    ):
        event = _progress("t1")
        subscribers.publish(event)

        assert mine.queue.get_nowait() == event
        assert other_tenant.queue.empty()
        assert other_task.queue.empty()


def test_leaving_the_block_unsubscribes() -> None:
    subscribers = Subscribers()
    with subscribers.subscribe("acme", "t1"), subscribers.subscribe("acme", "t1"):
        assert len(subscribers) == 2
    assert len(subscribers) == 0
    subscribers.publish(_progress("t1"))  # nobody listens: nothing to do, nothing raised


def test_a_reader_that_falls_behind_is_cut_off() -> None:
    subscribers = Subscribers(queue_limit=2)
    with subscribers.subscribe("acme", "t1") as sub:
        for _ in range(3):
            subscribers.publish(_progress("t1"))

        assert sub.closed
        items = [sub.queue.get_nowait() for _ in range(sub.queue.qsize())]
        assert len(items) == 3 and items[-1] is None


def test_close_all_ends_every_stream_once() -> None:
    subscribers = Subscribers()
    with subscribers.subscribe("acme", "t1") as sub:
        subscribers.close_all()
        subscribers.close_all()
        assert sub.queue.qsize() == 1 and sub.queue.get_nowait() is None


def test_frame_is_one_sse_message_with_the_event_on_one_data_line() -> None:
    event = _progress("t1")

    message = frame(event.id, event.type, event.model_dump_json()).decode()

    lines = message.split("\n")
    assert lines[:2] == [f"id: {event.id}", "event: stepbus.task.progress"]
    assert lines[2].startswith("data: ")
    assert json.loads(lines[2].removeprefix("data: "))["data"]["message"] == "line one\nline two"
    assert message.endswith("\n\n") and message.count("\n") == 4
    assert KEEP_ALIVE.startswith(b":") and KEEP_ALIVE.endswith(b"\n\n")
