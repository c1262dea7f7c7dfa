"""Regression replay and time travel: re-drive recorded tasks through this planner code, diff
the decisions, fork a task from a step.

``recording`` reads a task's journal (from Kafka, or from an exported suite file),
``recorded`` answers a replay from it (model, tools, recalls, critiques, approvals),
``runner`` runs the real planner in a namespace of its own, ``diff`` compares and prints,
``forking`` submits a fork, and ``cli`` adds ``stepbus replay``, ``export`` and ``fork`` to the
``stepbus`` command.

Nothing is imported here: the planner's own wiring reads journals through ``recording``
(forks), and ``runner`` imports that wiring.
"""
