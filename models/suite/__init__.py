"""The multi-task suite: deterministic task generators, held-out evaluation sets, and ``evaluate(model)``."""

from evostream.models.suite.tasks import TASKS, Example, Task, make_split

__all__ = ["TASKS", "Example", "Task", "make_split"]
