"""Named hook priorities (MMEngine's names and values): smaller runs earlier.

:func:`d2lite.engine.lazy_train.default_hooks` orders the built-in hooks and the
config-declared ``train.hooks`` by priority (stable: equal priorities keep their list
order). A hook's priority is its ``priority`` attribute (class or instance), ``"NORMAL"``
by default; the built-in hooks' values place a config-declared hook of priority NORMAL
after the LR scheduler and before the checkpointer, evaluation and the writers, so the
scalars it puts into the storage are written in the same iteration and its state at a
checkpoint is the state after the step.
"""

from enum import IntEnum
from typing import Any, Union

__all__ = ["Priority", "get_priority"]


class Priority(IntEnum):
    """Hook priorities; a hook may also use any int in [0, 100]."""

    HIGHEST = 0
    VERY_HIGH = 10
    HIGH = 30
    ABOVE_NORMAL = 40
    NORMAL = 50
    BELOW_NORMAL = 60
    LOW = 70
    VERY_LOW = 90
    LOWEST = 100


def get_priority(priority: Union[int, str, Priority]) -> int:
    """The int value of a priority given as a name (``"LOW"``, case-insensitive),
    a :class:`Priority` or an int in [0, 100]."""
    if isinstance(priority, str):
        try:
            return int(Priority[priority.upper()])
        except KeyError:
            names = ", ".join(p.name for p in Priority)
            raise ValueError(f"Unknown hook priority {priority!r}; use one of {names} or an int in [0, 100].") from None
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise TypeError(f"A hook priority must be a name or an int in [0, 100], got {priority!r}.")
    if not 0 <= int(priority) <= 100:
        raise ValueError(f"A hook priority must be in [0, 100], got {priority}.")
    return int(priority)


def hook_priority(hook: Any) -> int:
    """The priority of ``hook``: its ``priority`` attribute, NORMAL if it has none."""
    return get_priority(getattr(hook, "priority", Priority.NORMAL))
