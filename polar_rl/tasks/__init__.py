"""Tasks: example objects, built-in and spec-defined sources, hash splits, mixtures, gsm8k answers."""

from polar_rl.tasks.examples import Example, GenExample, MCExample, Task, TaskError
from polar_rl.tasks.sources import KNOWN_TASKS, load_task
from polar_rl.tasks.splits import hash_split

__all__ = [
    "KNOWN_TASKS",
    "Example",
    "GenExample",
    "MCExample",
    "Task",
    "TaskError",
    "hash_split",
    "load_task",
]
