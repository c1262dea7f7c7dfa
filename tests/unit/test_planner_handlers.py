"""PlannerHandlers driven end to end in memory: a scripted model, and Kafka mimicked by a loop.

Whatever a handler emits to ``t.planner.history`` is fed back into ``on_history`` (as the
planner's own consumer would read it); ``t.tool.calls`` commands are answered by a fake
executor; ``t.results`` is collected.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from stepbus_contracts import (
    ApprovalDecided,
    CloudEvent,
    CriticPolicy,
    CritiqueRequested,
    LlmDecided,
    TaskAccepted,
    TaskCancelled,
    TaskCancelRequested,
    TaskCancelRequestedData,
    TaskCompleted,
    TaskFailed,
    TaskProgress,
    TaskSubmitted,
    TaskSubmittedData,
    TokenUsage,
    ToolCallCompleted,
    ToolCallCompletedData,
    ToolCallFailed,
    ToolCallFailedData,
    ToolCallRequested,
    Topics,
    derive_id,
)
from stepbus_planner.handlers import PlannerHandlers
from stepbus_planner.ports import ModelError, ModelToolCall, ModelTurn
from stepbus_planner.state import HistoryEventT, TaskState, fold
from stepbus_planner.store import SNAPSHOT_STAGE, TaskStates
from stepbus_runtime import Emit, RecordContext, RetryableError

TOPICS = Topics("t.")
TASK = "task-1"
TENANT = "acme"
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
MAX_ATTEMPTS = 3
TERMINAL_TYPES = (TaskCompleted, TaskFailed, TaskCancelled)
PROGRESS = "stepbus.task.progress"


# -- test doubles -----------------------------------------------------------------------------


class ScriptedModel:
    """A ChatModel that answers from a script and records every call."""

    model = "scripted-test-model"

    def __init__(self, *script: ModelTurn | ModelError) -> None:
        self._script = list(script)
        self.calls: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]] = []

    async def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], **_: Any
    ) -> ModelTurn:
        self.calls.append((copy.deepcopy(messages), copy.deepcopy(tools)))
        assert self._script, "the model was called more often than scripted"
        answer = self._script.pop(0)
        if isinstance(answer, ModelError):
            raise answer
        return answer


class FakeCatalog:
    """Stands in for ToolCatalog (whose constructor needs Kafka)."""

    def __init__(self, *names: str, reviewed: Iterable[str] = ()) -> None:
        self._names = set(names)
        self._reviewed = frozenset(reviewed)

    def reviewed(self) -> frozenset[str]:
        return self._reviewed

    def description(self, name: str) -> str | None:
        return f"the {name} tool" if name in self._names else None

    def register(self, name: str) -> None:
        self._names.add(name)

    def names(self) -> set[str]:
        return set(self._names)

    def specs(self, names: list[str]) -> list[dict[str, Any]]:
        return [
            {"type": "function", "function": {"name": n, "description": n, "parameters": {}}}
            for n in names
            if n in self._names
        ]


def tool_turn(*calls: tuple[str, str], tokens: int = 10) -> ModelTurn:
    """A model turn asking for ``(name, arguments_json)`` calls."""
    return ModelTurn(
        content="let me compute",
        tool_calls=[
            ModelToolCall(id=f"llm-call-{i}", name=name, arguments=args)
            for i, (name, args) in enumerate(calls)
        ],
        usage=TokenUsage(prompt_tokens=tokens, completion_tokens=1),
        finish_reason="tool_calls",
    )


def calc(expression: str) -> tuple[str, str]:
    return ("calculator", f'{{"expression": "{expression}"}}')


def answer(text: str, tokens: int = 10) -> ModelTurn:
    return ModelTurn(
        content=text,
        usage=TokenUsage(prompt_tokens=tokens, completion_tokens=2),
        finish_reason="stop",
    )


RESULTS = {"17 * 23": "391", "391 + 1": "392"}


def fake_executor(command: ToolCallRequested) -> list[CloudEvent]:
    """What the tool-executor would put on planner.history for ``command``: a call to a tool
    the task was not offered is denied, as the executor's policy does."""
    call = command.data
    if call.offered is not None and call.name not in call.offered:
        return [
            ToolCallFailed(
                id=derive_id(command.id, "outcome"),
                source="urn:test:executor",
                subject=command.subject,
                tenant=command.tenant,
                data=ToolCallFailedData(
                    step=call.step,
                    call_index=call.call_index,
                    name=call.name,
                    idempotency_key=call.idempotency_key,
                    error=f"denied: tool {call.name!r} was not offered to this task",
                    error_type="denied",
                ),
            )
        ]
    return [
        ToolCallCompleted(
            id=derive_id(command.id, "outcome"),
            source="urn:test:executor",
            subject=command.subject,
            tenant=command.tenant,
            data=ToolCallCompletedData(
                step=call.step,
                call_index=call.call_index,
                name=call.name,
                idempotency_key=call.idempotency_key,
                output=RESULTS[call.arguments["expression"]],
            ),
        )
    ]


def submitted(
    *, event_id: str = "submit-1", tools: Sequence[str] | None = ("calculator",), **data: Any
) -> TaskSubmitted:
    return TaskSubmitted(
        id=event_id,
        source="urn:test",
        subject=TASK,
        tenant=TENANT,
        data=TaskSubmittedData(
            input="What is 17 * 23?", tools=None if tools is None else list(tools), **data
        ),
    )


def cancel_request(event_id: str = "cancel-1") -> TaskCancelRequested:
    return TaskCancelRequested(
        id=event_id,
        source="urn:test",
        subject=TASK,
        tenant=TENANT,
        data=TaskCancelRequestedData(reason="user asked"),
    )


def context(topic: str, *, attempt: int = 1, offset: int = 0) -> RecordContext:
    return RecordContext(topic, 0, offset, TASK, attempt, MAX_ATTEMPTS)


class SnapshotsAside:
    """The planner's handlers with their (deferred) state snapshots set aside for inspection."""

    def __init__(self, handlers: PlannerHandlers, snapshots: list[Emit]) -> None:
        self.inner = handlers
        self.snapshots = snapshots

    def _split(self, outputs: Sequence[Emit]) -> list[Emit]:
        for emit in outputs:
            if emit.topic == TOPICS.planner_snapshots:
                assert emit.stage == SNAPSHOT_STAGE, "a snapshot must wait for the outputs"
                assert all(e.stage < emit.stage for e in outputs if e is not emit)
                self.snapshots.append(emit)
        return [emit for emit in outputs if emit.topic != TOPICS.planner_snapshots]

    async def on_task(
        self, event: TaskSubmitted | TaskCancelRequested, ctx: RecordContext
    ) -> list[Emit]:
        return self._split(await self.inner.on_task(event, ctx))

    async def on_history(self, event: HistoryEventT, ctx: RecordContext) -> list[Emit]:
        return self._split(await self.inner.on_history(event, ctx))


class Loop:
    """The planner and a fake executor wired together the way Kafka wires them."""

    def __init__(
        self,
        model: ScriptedModel,
        *,
        catalog: Iterable[str] = ("calculator",),
        deliveries: int = 1,
        hold_tool_calls: bool = False,
        executor: Callable[[ToolCallRequested], list[CloudEvent]] = fake_executor,
        memory: bool = False,
        critic: Callable[[CritiqueRequested], CloudEvent | None] | None = None,
        reviewed: Iterable[str] = (),
        critic_policy: CriticPolicy | None = None,
    ) -> None:
        self.model = model
        self.now = NOW
        self.catalog = FakeCatalog(*catalog, reviewed=reviewed)
        self.critic = critic
        self.critique_requests: list[CritiqueRequested] = []
        self.store = TaskStates("127.0.0.1:1", "t.planner.history", TOPICS.planner_snapshots)
        self.snapshots: list[Emit] = []
        self.handlers = SnapshotsAside(
            PlannerHandlers(
                model=model,
                store=self.store,
                catalog=self.catalog,  # type: ignore[arg-type]
                topics=TOPICS,
                max_attempts=MAX_ATTEMPTS,
                clock=lambda: self.now,
                memory=memory,
                recall_timeout_seconds=0.0 if memory else 2.0,
                critic=critic is not None,
                critic_policy=critic_policy,
                critique_timeout_seconds=0.0,
            ),
            self.snapshots,
        )
        self.recall_requests: list[CloudEvent] = []
        self.deliveries = deliveries
        self.hold_tool_calls = hold_tool_calls
        self.executor = executor
        self.emitted: list[Emit] = []
        self.held: list[ToolCallRequested] = []
        self.history: list[CloudEvent] = []
        self.redelivery_outputs: list[Emit] = []

    async def deliver(self, event: CloudEvent, *, attempt: int = 1) -> Sequence[Emit]:
        """Hand one planner.history record to the planner (no feedback)."""
        ctx = context(TOPICS.planner_history, attempt=attempt, offset=len(self.history))
        return await self.handlers.on_history(cast(HistoryEventT, event), ctx)

    async def task(
        self, event: TaskSubmitted | TaskCancelRequested | ApprovalDecided, *, attempt: int = 1
    ) -> Sequence[Emit]:
        outputs = await self.handlers.on_task(event, context(TOPICS.tasks, attempt=attempt))
        await self.pump(outputs)
        return outputs

    async def pump(self, outputs: Iterable[Emit]) -> None:
        queue = deque(outputs)
        while queue:
            emit = queue.popleft()
            self.emitted.append(emit)
            if emit.topic == TOPICS.planner_history:
                queue.extend(await self.deliver(emit.event))
                self.history.append(emit.event)
                for _ in range(self.deliveries - 1):  # redelivered before the offset commit
                    again = await self.deliver(emit.event)
                    self.redelivery_outputs.extend(again)
                    queue.extend(again)
            elif emit.topic == TOPICS.tool_calls:
                assert isinstance(emit.event, ToolCallRequested)
                if self.hold_tool_calls:
                    self.held.append(emit.event)
                else:
                    queue.extend(Emit(TOPICS.planner_history, e) for e in self.executor(emit.event))
            elif emit.topic == TOPICS.memory_requests:
                self.recall_requests.append(emit.event)  # answered by the test, if at all
            elif emit.topic == TOPICS.critic_requests:
                assert isinstance(emit.event, CritiqueRequested) and self.critic is not None
                self.critique_requests.append(emit.event)
                verdict = self.critic(emit.event)  # None: held (answered by the test, if at all)
                if verdict is not None:
                    queue.append(Emit(TOPICS.planner_history, verdict))
            elif emit.topic == TOPICS.audit:
                continue  # the audit trail: read by the tests through `emitted`
            else:
                assert emit.topic == TOPICS.results, emit.topic

    async def release_tool_calls(self) -> None:
        held, self.held = self.held, []
        for command in held:
            await self.pump(Emit(TOPICS.planner_history, e) for e in self.executor(command))

    def on(self, topic: str) -> list[CloudEvent]:
        return [e.event for e in self.emitted if e.topic == topic]

    def terminals(self) -> list[CloudEvent]:
        return [e for e in self.on(TOPICS.results) if isinstance(e, TERMINAL_TYPES)]


def calculator_model() -> ScriptedModel:
    return ScriptedModel(tool_turn(calc("17 * 23")), answer("17 * 23 = 391"))


# -- acceptance -------------------------------------------------------------------------------


async def test_a_submitted_task_is_accepted_onto_the_history() -> None:
    handlers = Loop(calculator_model()).handlers
    event = submitted(max_iterations=5, deadline_seconds=60, token_budget=1000)
    outputs = await handlers.on_task(event, context(TOPICS.tasks))

    assert [(o.topic, type(o.event)) for o in outputs] == [(TOPICS.planner_history, TaskAccepted)]
    accepted = outputs[0].event
    assert isinstance(accepted, TaskAccepted)
    assert (accepted.subject, accepted.tenant) == (TASK, TENANT)
    assert accepted.id == derive_id(event.id, "accepted")
    data = accepted.data
    assert data.input == "What is 17 * 23?"
    assert data.tools == ["calculator"]
    assert (data.max_iterations, data.token_budget) == (5, 1000)
    assert data.deadline_at == NOW + timedelta(seconds=60)
    assert (data.submitted_id, data.model) == (event.id, "scripted-test-model")


async def test_a_task_without_a_tool_list_is_offered_every_registered_tool() -> None:
    loop = Loop(calculator_model(), catalog=("search", "calculator"))
    outputs = await loop.handlers.on_task(submitted(tools=None), context(TOPICS.tasks))
    assert isinstance(outputs[0].event, TaskAccepted)
    assert outputs[0].event.data.tools == ["calculator", "search"]


async def test_an_unknown_tool_is_retried_while_the_catalog_may_catch_up() -> None:
    loop = Loop(calculator_model())
    with pytest.raises(RetryableError, match="rm-rf"):
        await loop.task(submitted(tools=["calculator", "rm-rf"]), attempt=MAX_ATTEMPTS - 1)
    assert loop.emitted == []


async def test_a_tool_registered_between_attempts_is_accepted() -> None:
    loop = Loop(calculator_model())
    with pytest.raises(RetryableError):
        await loop.task(submitted(tools=["calculator", "search"]))
    loop.catalog.register("search")
    outputs = await loop.task(submitted(tools=["calculator", "search"]), attempt=2)
    assert [type(o.event) for o in outputs] == [TaskAccepted]


async def test_a_task_asking_for_an_unknown_tool_fails_as_invalid_on_the_last_attempt() -> None:
    loop = Loop(calculator_model())
    outputs = await loop.task(submitted(tools=["calculator", "rm-rf"]), attempt=MAX_ATTEMPTS)

    assert [(o.topic, type(o.event)) for o in outputs] == [
        (TOPICS.planner_history, TaskFailed),
        (TOPICS.results, TaskFailed),
    ]
    [failure] = loop.terminals()
    assert isinstance(failure, TaskFailed)
    assert failure.data.reason == "invalid_task"
    assert "rm-rf" in failure.data.message
    assert loop.model.calls == []
    assert await loop.handlers.on_task(submitted(), context(TOPICS.tasks)) == []


# -- the loop ---------------------------------------------------------------------------------


async def test_a_calculator_task_completes_once_with_the_model_answer() -> None:
    loop = Loop(calculator_model())
    await loop.task(submitted())

    [terminal] = loop.terminals()
    assert isinstance(terminal, TaskCompleted)
    assert terminal.data.output == "17 * 23 = 391"
    assert terminal.data.steps == 2
    assert terminal.data.usage.total_tokens == 11 + 12
    assert (terminal.subject, terminal.tenant) == (TASK, TENANT)
    assert len(loop.model.calls) == 2


async def test_the_model_sees_the_offered_tools_and_the_tool_result() -> None:
    loop = Loop(calculator_model(), catalog=("calculator", "search"))
    await loop.task(submitted())

    first_messages, first_tools = loop.model.calls[0]
    assert [t["function"]["name"] for t in first_tools] == ["calculator"]
    assert [m["role"] for m in first_messages] == ["system", "user"]
    second_messages, _ = loop.model.calls[1]
    assert second_messages[-1] == {
        "role": "tool",
        "tool_call_id": "llm-call-0",
        "content": '<tool_output tool="calculator" source="builtin" trust="untrusted">\n391\n'
        "</tool_output>",
    }


async def test_progress_is_published_on_the_results_topic() -> None:
    loop = Loop(calculator_model())
    await loop.task(submitted())

    stages = [e.data.stage for e in loop.on(TOPICS.results) if isinstance(e, TaskProgress)]
    assert stages == ["accepted", "thought", "action", "observation"]


async def test_every_output_keeps_the_task_id_and_tenant() -> None:
    loop = Loop(calculator_model())
    await loop.task(submitted())
    assert {(e.event.subject, e.event.tenant) for e in loop.emitted} == {(TASK, TENANT)}


async def test_the_decision_is_recorded_before_its_tool_calls_are_dispatched() -> None:
    loop = Loop(calculator_model())
    await loop.task(submitted())
    kinds = [type(e.event) for e in loop.emitted if e.topic != TOPICS.results]
    assert kinds.index(LlmDecided) < kinds.index(ToolCallRequested)
    # Made in one pass, published in stages: the calls only after the decision is acked.
    decided = next(e for e in loop.emitted if isinstance(e.event, LlmDecided))
    calls = [e for e in loop.emitted if isinstance(e.event, ToolCallRequested)]
    assert calls and all(call.stage > decided.stage for call in calls)


async def test_a_decision_read_back_from_the_journal_changes_nothing() -> None:
    loop = Loop(calculator_model())
    await loop.task(submitted())
    decisions = [e.event for e in loop.emitted if isinstance(e.event, LlmDecided)]
    assert len(decisions) == 2
    for decision in decisions:  # the pump delivered each once already; again changes nothing
        assert await loop.deliver(decision) == []


async def test_a_decision_from_an_earlier_planner_version_is_dispatched_when_read() -> None:
    """Journals written before decisions were folded at once still move on when read."""
    loop = Loop(calculator_model())
    accepted = (await loop.handlers.on_task(submitted(), context(TOPICS.tasks)))[0].event
    outputs = await loop.deliver(accepted)
    decided = next(e.event for e in outputs if isinstance(e.event, LlmDecided))
    fresh = Loop(calculator_model())  # a planner that folded the acceptance only
    fresh.store.put(fold(TaskState(task_id=TASK, tenant=TENANT), accepted)[0], 0)
    outputs = await fresh.deliver(decided)
    assert [type(e.event) for e in outputs if e.topic == TOPICS.tool_calls] == [ToolCallRequested]


async def test_the_model_is_asked_again_after_a_step_of_several_tool_calls() -> None:
    model = ScriptedModel(
        tool_turn(calc("17 * 23"), calc("391 + 1")),
        tool_turn(calc("17 * 23")),
        answer("done"),
    )
    loop = Loop(model)
    await loop.task(submitted())

    [terminal] = loop.terminals()
    assert isinstance(terminal, TaskCompleted) and terminal.data.steps == 3
    tool_messages = [m["content"] for m in model.calls[1][0] if m["role"] == "tool"]
    assert [m.split("\n")[1] for m in tool_messages] == ["391", "392"]


async def test_a_task_that_never_answers_fails_at_max_iterations() -> None:
    model = ScriptedModel(tool_turn(calc("17 * 23")), tool_turn(calc("17 * 23")))
    loop = Loop(model)
    await loop.task(submitted(max_iterations=2))

    [terminal] = loop.terminals()
    assert isinstance(terminal, TaskFailed) and terminal.data.reason == "max_iterations"
    assert len(model.calls) == 2


async def test_a_task_past_its_deadline_fails_on_its_next_event() -> None:
    loop = Loop(calculator_model(), hold_tool_calls=True)
    await loop.task(submitted(deadline_seconds=30))
    loop.now = NOW + timedelta(seconds=31)
    await loop.release_tool_calls()

    [terminal] = loop.terminals()
    assert isinstance(terminal, TaskFailed) and terminal.data.reason == "deadline"
    assert len(loop.model.calls) == 1


async def test_a_task_over_its_token_budget_fails() -> None:
    model = ScriptedModel(tool_turn(calc("17 * 23"), tokens=500), answer("391"))
    loop = Loop(model)
    await loop.task(submitted(token_budget=100))

    [terminal] = loop.terminals()
    assert isinstance(terminal, TaskFailed) and terminal.data.reason == "token_budget"
    assert loop.on(TOPICS.tool_calls) == []


# -- redelivery and duplicates ----------------------------------------------------------------


async def test_redelivered_history_events_cause_no_extra_model_calls_or_terminals() -> None:
    once = Loop(calculator_model())
    await once.task(submitted())
    twice = Loop(calculator_model(), deliveries=2)
    await twice.task(submitted())

    assert twice.redelivery_outputs == []
    assert len(twice.model.calls) == len(once.model.calls) == 2
    assert len(twice.terminals()) == 1
    assert [e.event.id for e in twice.emitted] == [e.event.id for e in once.emitted]


async def test_replaying_the_whole_history_after_the_end_produces_nothing() -> None:
    loop = Loop(calculator_model())
    await loop.task(submitted())
    for event in list(loop.history):
        assert await loop.deliver(event) == []
    assert len(loop.model.calls) == 2


async def test_a_redelivered_tool_outcome_mid_task_is_ignored() -> None:
    loop = Loop(calculator_model(), hold_tool_calls=True)
    await loop.task(submitted())
    [command] = loop.held
    outcome = fake_executor(command)[0]
    first = await loop.deliver(outcome)
    again = await loop.deliver(outcome)

    assert any(isinstance(e.event, LlmDecided) for e in first)
    assert again == []
    assert len(loop.model.calls) == 2


async def test_a_duplicate_submission_of_a_running_task_produces_nothing() -> None:
    loop = Loop(calculator_model(), hold_tool_calls=True)
    await loop.task(submitted())
    assert await loop.handlers.on_task(submitted(), context(TOPICS.tasks)) == []
    resubmitted = submitted(event_id="submit-2")  # same task id, new CloudEvent id
    assert await loop.handlers.on_task(resubmitted, context(TOPICS.tasks)) == []
    assert len(loop.model.calls) == 1


async def test_a_duplicate_submission_of_a_finished_task_produces_nothing() -> None:
    loop = Loop(calculator_model())
    await loop.task(submitted())
    assert await loop.handlers.on_task(submitted(), context(TOPICS.tasks)) == []


async def test_a_submission_redelivered_before_acceptance_is_folded_runs_the_task_once() -> None:
    loop = Loop(calculator_model())
    first = await loop.handlers.on_task(submitted(), context(TOPICS.tasks))
    second = await loop.handlers.on_task(submitted(), context(TOPICS.tasks))
    assert [e.event.id for e in first] == [e.event.id for e in second]  # consumers dedupe by id

    await loop.pump([*first, *second])
    assert len(loop.model.calls) == 2
    assert len(loop.terminals()) == 1


# -- cancellation -----------------------------------------------------------------------------


async def test_a_cancel_mid_run_ends_the_task_once_and_later_outcomes_produce_nothing() -> None:
    loop = Loop(calculator_model(), hold_tool_calls=True)
    await loop.task(submitted())
    assert len(loop.held) == 1

    outputs = await loop.task(cancel_request())
    assert [(o.topic, type(o.event)) for o in outputs] == [
        (TOPICS.planner_history, TaskCancelled),
        (TOPICS.results, TaskCancelled),
    ]
    cancelled = outputs[1].event
    assert isinstance(cancelled, TaskCancelled)
    assert (cancelled.data.reason, cancelled.data.steps) == ("user asked", 1)

    emitted_before = len(loop.emitted)
    command = loop.held[0]
    await loop.release_tool_calls()
    assert loop.emitted[emitted_before + 1 :] == []  # only the outcome itself was delivered
    late = fake_executor(command)[0]
    assert await loop.deliver(late) == []

    assert [type(e) for e in loop.terminals()] == [TaskCancelled]
    assert len(loop.model.calls) == 1


async def test_a_second_cancel_request_produces_nothing() -> None:
    loop = Loop(calculator_model(), hold_tool_calls=True)
    await loop.task(submitted())
    await loop.task(cancel_request())
    assert await loop.handlers.on_task(cancel_request(), context(TOPICS.tasks)) == []
    assert await loop.handlers.on_task(cancel_request("cancel-2"), context(TOPICS.tasks)) == []


async def test_cancelling_a_finished_or_unknown_task_produces_nothing() -> None:
    loop = Loop(calculator_model())
    assert await loop.handlers.on_task(cancel_request(), context(TOPICS.tasks)) == []
    await loop.task(submitted())
    assert await loop.handlers.on_task(cancel_request(), context(TOPICS.tasks)) == []
    assert [type(e) for e in loop.terminals()] == [TaskCompleted]


async def test_a_cancel_right_after_submission_still_cancels_the_task() -> None:
    loop = Loop(calculator_model())
    accepted = await loop.handlers.on_task(submitted(), context(TOPICS.tasks))
    cancel = await loop.handlers.on_task(cancel_request(), context(TOPICS.tasks))
    await loop.pump([*accepted, *cancel])

    assert [type(e) for e in loop.terminals()] == [TaskCancelled]


async def test_a_cancel_that_arrives_before_a_queued_step_starts_stops_the_model_call() -> None:
    """The cancellation's record waits behind the record that asks the model; it arrived
    first, so the model is not asked (else the cancellation would wait a whole call)."""
    loop = Loop(calculator_model())
    [accepted] = await loop.handlers.on_task(submitted(), context(TOPICS.tasks))
    loop.handlers.inner.on_task_arrival(cancel_request())  # fetched while acceptance is queued
    assert await loop.deliver(accepted.event) == []  # interrupted: no model call
    assert loop.model.calls == []
    outputs = await loop.task(cancel_request())
    assert [type(o.event) for o in outputs[:2]] == [TaskCancelled, TaskCancelled]


async def test_a_cancel_from_another_tenant_does_not_stop_the_model_call() -> None:
    loop = Loop(calculator_model())
    [accepted] = await loop.handlers.on_task(submitted(), context(TOPICS.tasks))
    foreign = cancel_request().model_copy(update={"tenant": "other"})
    loop.handlers.inner.on_task_arrival(foreign)
    await loop.pump([accepted])
    assert [type(e) for e in loop.terminals()] == [TaskCompleted]


# -- model failures ---------------------------------------------------------------------------


async def test_a_retryable_model_error_before_the_last_attempt_is_retried() -> None:
    model = ScriptedModel(
        ModelError("rate limited", retryable=True),
        tool_turn(calc("17 * 23")),
        answer("17 * 23 = 391"),
    )
    loop = Loop(model)
    [accepted] = await loop.handlers.on_task(submitted(), context(TOPICS.tasks))
    with pytest.raises(RetryableError):
        await loop.deliver(accepted.event, attempt=MAX_ATTEMPTS - 1)

    # The processor's next attempt finds nothing recorded by the failed one and asks again.
    retried = await loop.deliver(accepted.event, attempt=MAX_ATTEMPTS)
    await loop.pump(retried)
    [terminal] = loop.terminals()
    assert isinstance(terminal, TaskCompleted)
    assert len(model.calls) == 3


async def test_a_retryable_model_error_on_the_last_attempt_fails_the_task() -> None:
    model = ScriptedModel(ModelError("overloaded", retryable=True))
    loop = Loop(model)
    [accepted] = await loop.handlers.on_task(submitted(), context(TOPICS.tasks))
    outputs = await loop.deliver(accepted.event, attempt=MAX_ATTEMPTS)

    assert [o.topic for o in outputs if isinstance(o.event, TaskFailed)] == [
        TOPICS.planner_history,
        TOPICS.results,
    ]
    [failure] = [o.event for o in outputs if o.topic == TOPICS.results and o.event.type != PROGRESS]
    assert isinstance(failure, TaskFailed)
    assert failure.data.reason == "llm_error"
    assert "overloaded" in failure.data.message
    assert await loop.deliver(accepted.event, attempt=MAX_ATTEMPTS) == []


async def test_a_non_retryable_model_error_fails_the_task_at_once() -> None:
    model = ScriptedModel(ModelError("bad request", retryable=False))
    loop = Loop(model)
    await loop.task(submitted())

    [terminal] = loop.terminals()
    assert isinstance(terminal, TaskFailed) and terminal.data.reason == "llm_error"
    assert len(model.calls) == 1


# -- tool calls -------------------------------------------------------------------------------


async def test_a_tool_that_was_not_offered_goes_to_the_executor_with_what_was_offered() -> None:
    model = ScriptedModel(tool_turn(("search", '{"q": "x"}')), answer("sorry"))
    loop = Loop(model, catalog=("calculator", "search"))
    await loop.task(submitted(tools=["calculator"], roles=["analyst"], metadata={"env": "prod"}))

    [command] = loop.on(TOPICS.tool_calls)
    assert isinstance(command, ToolCallRequested)
    # The executor's policy denies it (and audits the denial): it knows what was offered.
    assert command.data.name == "search" and command.data.offered == ["calculator"]
    assert command.data.roles == ["analyst"] and command.data.metadata == {"env": "prod"}
    [refusal] = [e for e in loop.history if isinstance(e, ToolCallFailed)]
    assert refusal.data.error_type == "denied"
    assert model.calls[1][0][-1]["content"] == (
        "error: denied: tool 'search' was not offered to this task"
    )
    assert [type(e) for e in loop.terminals()] == [TaskCompleted]


async def test_invalid_tool_arguments_are_refused_by_the_planner() -> None:
    model = ScriptedModel(tool_turn(("calculator", "{not json")), answer("sorry"))
    loop = Loop(model)
    await loop.task(submitted())

    assert loop.on(TOPICS.tool_calls) == []
    [refusal] = [e for e in loop.history if isinstance(e, ToolCallFailed)]
    assert isinstance(refusal, ToolCallFailed)
    assert refusal.data.error_type == "invalid_arguments"
    assert model.calls[1][0][-1]["content"].startswith("error: arguments are not valid JSON")


async def test_tool_commands_carry_the_idempotency_key_task_step_call_index() -> None:
    model = ScriptedModel(
        tool_turn(calc("17 * 23"), calc("391 + 1")), tool_turn(calc("17 * 23")), answer("ok")
    )
    loop = Loop(model)
    await loop.task(submitted())

    commands = [c for c in loop.on(TOPICS.tool_calls) if isinstance(c, ToolCallRequested)]
    assert [c.data.idempotency_key for c in commands] == [
        f"{TASK}:0:0",
        f"{TASK}:0:1",
        f"{TASK}:1:0",
    ]
    assert [(c.data.step, c.data.call_index) for c in commands] == [(0, 0), (0, 1), (1, 0)]
    assert [c.data.arguments for c in commands] == [
        {"expression": "17 * 23"},
        {"expression": "391 + 1"},
        {"expression": "17 * 23"},
    ]


# -- deterministic ids ------------------------------------------------------------------------


async def test_output_event_ids_are_derived_deterministically_from_their_cause() -> None:
    runs = []
    for _ in range(2):
        loop = Loop(calculator_model())
        await loop.task(submitted())
        runs.append([(e.topic, e.event.type, e.event.id) for e in loop.emitted])
    assert runs[0] == runs[1]


async def test_output_event_ids_are_unique_within_a_task() -> None:
    loop = Loop(calculator_model())
    await loop.task(submitted())
    history_and_commands = [e.event.id for e in loop.emitted if e.topic != TOPICS.results]
    assert len(set(history_and_commands)) == len(history_and_commands)
    progress = [e.event.id for e in loop.emitted if e.event.type == "stepbus.task.progress"]
    assert len(set(progress)) == len(progress)


async def test_a_different_submission_yields_different_ids() -> None:
    first, second = Loop(calculator_model()), Loop(calculator_model())
    await first.task(submitted(event_id="submit-1"))
    await second.task(submitted(event_id="submit-2"))
    assert {e.event.id for e in first.emitted}.isdisjoint({e.event.id for e in second.emitted})
