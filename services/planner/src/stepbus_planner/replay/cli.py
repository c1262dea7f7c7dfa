"""``stepbus replay``, ``export`` and ``fork``: the planner's commands of the ``stepbus`` CLI.

They talk to Kafka, not to the gateway: they read journals and run this package's planner code,
configured like the planner service (``KAFKA_BOOTSTRAP_SERVERS``, ``STEPBUS_TOPIC_PREFIX``,
``OPENAI_BASE_URL``, ``STEPBUS_MODEL``, ...). The ``stepbus`` CLI finds them through the
``stepbus.cli`` entry point, so the CLI library never imports a service.

Exit codes of ``replay``: 0 nothing diverged, 1 a task diverged (a suite: more than
``--max-diverged`` did), 2 the replay could not run (no journal, a bad suite file, a task that
did not end).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from stepbus_contracts import TaskCompleted, TaskFailed
from stepbus_runtime import setup_telemetry
from stepbus_runtime.logfmt import configure_logging
from stepbus_runtime.telemetry import shutdown_telemetry

from ..settings import PlannerSettings
from .diff import TaskDiff, render, render_summary
from .forking import fork_submission, run_fork
from .recording import Recording, RecordingError, from_lines, load_recordings, to_lines
from .runner import ModelMode, ReplayOptions, replay
from .shadow import shadow_report

__all__ = ["register"]

EXIT_DIVERGED, EXIT_UNREPLAYABLE = 1, 2

Tenant = Annotated[
    str | None,
    typer.Option(
        help="The tenant of the task (needed when several use the id).", show_default=False
    ),
]


def _fail(message: str, code: int = EXIT_UNREPLAYABLE) -> typer.Exit:
    typer.echo(f"stepbus: {message}", err=True)
    return typer.Exit(code)


def _load(settings: PlannerSettings, task_ids: list[str], tenant: str | None) -> list[Recording]:
    try:
        return asyncio.run(
            load_recordings(settings.kafka_bootstrap_servers, settings.topics, task_ids, tenant)
        )
    except RecordingError as exc:
        raise _fail(str(exc)) from None
    except Exception as exc:  # the broker unreachable, mostly
        raise _fail(
            f"cannot read the journal at {settings.kafka_bootstrap_servers}: {exc}"
        ) from None


def _quiet() -> None:
    """Only warnings from the planner's parts: the diff is the output."""
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(message)s"
    )


def _traced() -> bool:
    """Export the replay's spans (its own traces, linked to the originals) when an OTLP
    endpoint is configured, as the services do; warnings only on stderr either way."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return False
    setup_telemetry("stepbus-replay")
    configure_logging("stepbus-replay", level="WARNING", fmt="text")
    return True


def replay_command(
    task_ids: Annotated[
        list[str] | None, typer.Argument(help="Tasks to replay.", show_default=False)
    ] = None,
    tenant: Tenant = None,
    suite: Annotated[
        Path | None,
        typer.Option(help="Replay every task of an exported suite file.", show_default=False),
    ] = None,
    model: Annotated[
        str, typer.Option(help="recorded: the recorded answers; live: the configured model.")
    ] = "recorded",
    from_step: Annotated[
        int, typer.Option(min=0, help="Steps before this one take the recorded answers.")
    ] = 0,
    prompt: Annotated[
        Path | None,
        typer.Option(help="A file with the system prompt to replay with.", show_default=False),
    ] = None,
    max_diverged: Annotated[
        int, typer.Option(min=0, help="A suite fails when more tasks than this diverge.")
    ] = 0,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds the replay may take.")] = 120.0,
    keep: Annotated[bool, typer.Option(help="Keep the replay's topics (to inspect).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (for scripts).")] = False,
) -> None:
    """Re-run recorded tasks with this planner code and diff its decisions with the record."""
    if model not in ("recorded", "live"):
        raise _fail(f"--model is recorded or live, not {model!r}")
    if bool(task_ids) == (suite is not None):
        raise _fail("give task ids or --suite FILE (one of them)")
    _quiet()
    settings = PlannerSettings()
    if suite is not None:
        try:
            with suite.open(encoding="utf-8") as lines:
                recordings = from_lines(lines, source=str(suite))
        except OSError as exc:
            raise _fail(f"cannot read {suite}: {exc.strerror}") from None
        except RecordingError as exc:
            raise _fail(str(exc)) from None
        if not recordings:
            raise _fail(f"{suite} holds no task")
    else:
        recordings = _load(settings, task_ids or [], tenant)
    system_prompt = None
    if prompt is not None:
        try:
            system_prompt = prompt.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise _fail(f"cannot read {prompt}: {exc.strerror}") from None
    mode: ModelMode = "live" if model == "live" else "recorded"
    options = ReplayOptions(
        model=mode,
        from_step=from_step,
        system_prompt=system_prompt or None,
        timeout_seconds=timeout,
        keep=keep,
    )
    traced = _traced()
    try:
        diffs = asyncio.run(replay(settings, recordings, options))
    except Exception as exc:
        raise _fail(f"the replay could not run: {exc}") from None
    finally:
        if traced:
            shutdown_telemetry()
    _report(diffs, model, as_json=as_json, suite=suite is not None)
    raise typer.Exit(_exit_code(diffs, max_diverged if suite is not None else 0))


def _exit_code(diffs: list[TaskDiff], max_diverged: int) -> int:
    if any(d.status == "failed" for d in diffs):
        return EXIT_UNREPLAYABLE
    diverged = sum(1 for d in diffs if d.status == "diverged")
    return EXIT_DIVERGED if diverged > max_diverged else 0


def _report(diffs: list[TaskDiff], model: str, *, as_json: bool, suite: bool) -> None:
    if as_json:
        document = [
            {
                "task_id": d.task_id,
                "tenant": d.tenant,
                "status": d.status,
                "diverged_at": d.diverged_at,
                "recorded_end": d.recorded_end,
                "replayed_end": d.replayed_end,
                "gaps": d.gaps,
                "error": d.error,
                "steps": {"recorded": len(d.recorded), "replayed": len(d.replayed)},
                "seconds": round(d.seconds, 3),
            }
            for d in diffs
        ]
        typer.echo(json.dumps(document, indent=2))
        return
    if not suite:
        for d in diffs:
            typer.echo(render(d, model))
        return
    for d in diffs:
        if d.status != "same":
            typer.echo(render(d, model) + "\n")
    typer.echo(render_summary(diffs))


def export_command(
    task_ids: Annotated[list[str], typer.Argument(help="Tasks to export.")],
    out: Annotated[Path, typer.Option(help="The suite file to write (JSON lines).")],
    tenant: Tenant = None,
) -> None:
    """Write recorded tasks to a suite file (journals, claim checks resolved, no secrets)."""
    _quiet()
    recordings = _load(PlannerSettings(), task_ids, tenant)
    lines = list(to_lines(recordings))
    try:
        out.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    except OSError as exc:
        raise _fail(f"cannot write {out}: {exc.strerror}") from None
    typer.echo(f"exported {len(recordings)} tasks ({len(lines)} events) to {out}")


def fork_command(
    task_id: Annotated[str, typer.Argument(help="The recorded task to fork.")],
    at_step: Annotated[
        int,
        typer.Option(
            "--at-step", min=0, help="Steps before this one are copied; the model decides it live."
        ),
    ],
    input_text: Annotated[
        str | None,
        typer.Option("--input", help="A new user turn the model reads at the fork's step."),
    ] = None,
    tenant: Tenant = None,
    new_id: Annotated[
        str | None,
        typer.Option("--as", help="The fork's task id (default: <id>.fork-<random>)."),
    ] = None,
    wait: Annotated[bool, typer.Option(help="Wait for the fork's result.")] = True,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds to wait for the result.")] = 300.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (for scripts).")] = False,
) -> None:
    """Start a live task from a recorded task's history before a step.

    The original is not touched. Exit codes: 0 the fork completed, 1 it failed or was
    cancelled, 2 it could not start or did not end in time.
    """
    _quiet()
    settings = PlannerSettings()
    (original,) = _load(settings, [task_id], tenant)
    try:
        submission = fork_submission(original, at_step, task_id=new_id, input_text=input_text)
    except (RecordingError, ValueError) as exc:
        raise _fail(str(exc).splitlines()[0]) from None
    if not as_json:
        typer.echo(f"{submission.subject}  (fork of {task_id} at step {at_step})")
    try:
        outcome = asyncio.run(
            run_fork(settings, submission, wait_seconds=timeout if wait else None)
        )
    except Exception as exc:
        raise _fail(
            f"cannot publish the fork to {settings.kafka_bootstrap_servers}: {exc}"
        ) from None
    terminal = outcome.terminal
    if as_json:
        document = {
            "task_id": outcome.task_id,
            "forked_from": task_id,
            "at_step": at_step,
            "result": terminal.model_dump(mode="json") if terminal is not None else None,
        }
        typer.echo(json.dumps(document, indent=2))
    if not wait:
        raise typer.Exit(0)
    if terminal is None:
        raise _fail(
            f"the fork {outcome.task_id} did not end within {timeout:g}s (it may still run)"
        )
    if isinstance(terminal, TaskCompleted):
        if not as_json:
            typer.echo(terminal.data.output)
        raise typer.Exit(0)
    if not as_json:
        if isinstance(terminal, TaskFailed):
            typer.echo(f"failed ({terminal.data.reason}): {terminal.data.message}", err=True)
        else:
            typer.echo(f"cancelled: {terminal.data.reason}", err=True)
    raise typer.Exit(EXIT_DIVERGED)


def shadow_report_command(
    name: Annotated[str, typer.Argument(help="The shadow (as started with --shadow NAME).")],
    tenant: Tenant = None,
    max_diverged: Annotated[
        int | None,
        typer.Option(min=0, help="Exit 1 when more compared tasks than this diverge."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (for scripts).")] = False,
) -> None:
    """Compare a shadow planner with production: decisions, answers, tokens."""
    _quiet()
    settings = PlannerSettings()
    try:
        report = asyncio.run(shadow_report(settings, name, tenant))
    except RecordingError as exc:
        raise _fail(f"no shadow {name!r}: {exc}") from None
    except Exception as exc:
        raise _fail(
            f"cannot read the journals at {settings.kafka_bootstrap_servers}: {exc}"
        ) from None
    live_tokens, shadow_tokens = report.tokens
    diverged = sum(1 for d in report.diffs if d.status == "diverged")
    if as_json:
        document = {
            "shadow": name,
            "compared": len(report.diffs),
            "same": len(report.diffs) - diverged,
            "diverged": diverged,
            "running": len(report.running),
            "tokens": {"live": live_tokens, "shadow": shadow_tokens},
            "tasks": [
                {
                    "task_id": d.task_id,
                    "tenant": d.tenant,
                    "status": d.status,
                    "diverged_at": d.diverged_at,
                    "live_end": d.recorded_end,
                    "shadow_end": d.replayed_end,
                }
                for d in report.diffs
            ],
        }
        typer.echo(json.dumps(document, indent=2))
    else:
        for d in report.diffs:
            if d.status != "same":
                typer.echo(render(d, f"shadow {name}", sides=("live", "shadow")) + "\n")
        if report.diffs:
            typer.echo(render_summary(report.diffs))
        change = ""
        if live_tokens:
            change = f" ({(shadow_tokens - live_tokens) / live_tokens:+.0%})"
        typer.echo(
            f"shadow {name}: {len(report.diffs)} tasks compared, {diverged} diverged, "
            f"{len(report.running)} still running; tokens: live {live_tokens}, shadow "
            f"{shadow_tokens}{change}"
        )
    if max_diverged is not None and diverged > max_diverged:
        raise typer.Exit(EXIT_DIVERGED)


def register(app: typer.Typer) -> None:
    """Add ``replay``, ``export``, ``fork`` and ``shadow-report`` to the ``stepbus`` CLI (the
    ``stepbus.cli`` entry point)."""
    app.command("replay")(replay_command)
    app.command("export")(export_command)
    app.command("fork")(fork_command)
    app.command("shadow-report")(shadow_report_command)
