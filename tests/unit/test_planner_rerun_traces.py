"""A replayed or shadow planner records its spans in a trace of its own, linked to the original
task's spans, and marks them with their mode: nothing it does lands in production's trace."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.trace import SpanContext, TraceFlags
from stepbus_planner import handlers as planner_handlers
from stepbus_runtime import RecordContext
from stepbus_runtime.tracing import MODE

from .test_planner_handlers import (
    MAX_ATTEMPTS,
    TASK,
    TENANT,
    TOPICS,
    Loop,
    calculator_model,
    submitted,
)
from .test_tracing import Recorder

ORIGINAL_TRACE = 0x0AF7651916CD43DD8448EB211C80319C
ORIGINAL_ROOT = 0x00F067AA0BA902B7
ORIGINAL_STEP_0 = 0x1111111111111111


def original(step: int) -> SpanContext | None:
    span = {-1: ORIGINAL_ROOT, 0: ORIGINAL_STEP_0}.get(step)
    if span is None:
        return None
    return SpanContext(ORIGINAL_TRACE, span, is_remote=True)


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    rec = Recorder()
    monkeypatch.setattr(planner_handlers, "_tracer", rec.tracer)
    yield rec
    rec.provider.shutdown()


async def run(mode: str) -> Loop:
    loop = Loop(calculator_model())
    loop.handlers.inner._mode = mode  # type: ignore[assignment]
    if mode != "live":
        loop.handlers.inner._originals = lambda tenant, task, step: original(step)
    upstream = SpanContext(
        0x5B8EFFF798038103D269B633813FC60C,
        0xEEE19B7EC3C1B174,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    ctx = RecordContext(TOPICS.tasks, 0, 0, TASK, 1, MAX_ATTEMPTS, trace_parent=upstream)
    await loop.pump(await loop.handlers.on_task(submitted(), ctx))
    for emit in loop.emitted:  # acknowledged: what is recorded then (the root span) is
        if emit.on_acked is not None:
            emit.on_acked()
    return loop


@pytest.mark.parametrize("mode", ["replay", "shadow"])
async def test_a_rerun_records_its_own_trace_linked_to_the_original(
    recorder: Recorder, mode: str
) -> None:
    loop = await run(mode)
    assert loop.terminals()[0].type == "stepbus.task.completed"
    spans = recorder.spans()
    (root,) = [s for s in spans if s.name == "invoke_agent stepbus"]
    assert root.context.trace_id != ORIGINAL_TRACE
    assert {s.context.trace_id for s in spans} == {root.context.trace_id}
    assert root.attributes[MODE] == mode
    assert [(link.context.trace_id, link.context.span_id) for link in root.links] == [
        (ORIGINAL_TRACE, ORIGINAL_ROOT)
    ]
    steps = [s for s in spans if s.name.startswith("step ")]
    assert steps and all(s.attributes[MODE] == mode for s in steps)
    step_0 = next(s for s in steps if s.name == "step 0")
    assert (ORIGINAL_TRACE, ORIGINAL_STEP_0) in {
        (link.context.trace_id, link.context.span_id) for link in step_0.links
    }


async def test_production_spans_carry_no_mode_and_no_original_link(recorder: Recorder) -> None:
    await run("live")
    spans = recorder.spans()
    (root,) = [s for s in spans if s.name == "invoke_agent stepbus"]
    assert root.context.trace_id == 0x5B8EFFF798038103D269B633813FC60C  # the upstream's
    assert not root.links
    assert all(MODE not in (s.attributes or {}) for s in spans)
    assert TENANT and all(s.attributes.get("stepbus.tenant") == TENANT for s in spans)
