"""Regression replay: re-drive recorded tasks through this planner code, diff the decisions.

``recording`` reads a task's journal (from Kafka, or from an exported suite file),
``recorded`` answers a replay from it (model, tools, recalls, critiques, approvals),
``runner`` runs the real planner in a namespace of its own, ``diff`` compares and prints, and
``cli`` adds ``stepbus replay`` and ``stepbus export`` to the ``stepbus`` command.
"""

from .diff import TaskDiff, compare, render, render_summary
from .recorded import RecordedModel, RecordedWorld
from .recording import Recording, RecordingError, from_lines, load_recordings, to_lines
from .runner import ReplayOptions, replay

__all__ = [
    "RecordedModel",
    "RecordedWorld",
    "Recording",
    "RecordingError",
    "ReplayOptions",
    "TaskDiff",
    "compare",
    "from_lines",
    "load_recordings",
    "render",
    "render_summary",
    "replay",
    "to_lines",
]
