"""The two axes of raft: task families and techniques, each a registry.

A task family (``raft/tasks/*.py``) and a technique (``raft/techniques/*.py``) each
register themselves at import time. ``raft.spec`` builds the YAML schema from what is
registered here, so adding a family or a technique is one new file and its tests.

Pure: no Ray import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import torch

    from raft.tasks.base import Task


class SectionModel(BaseModel):
    """Base for every spec section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TaskSpec(SectionModel):
    """The ``task:`` section. Each family subclasses it with a ``type`` literal."""

    type: str


class TechniqueSpec(SectionModel):
    """The ``technique:`` section. Each technique subclasses it with a ``type`` literal."""

    type: str
    # A technique that adds an adapter the export may merge into the base model.
    mergeable: ClassVar[bool] = False
    # A technique whose result is saved as a peft adapter rather than a full model.
    is_adapter: ClassVar[bool] = False


ApplyFn = Callable[["torch.nn.Module", Any, "Task"], "torch.nn.Module"]
# Returns None when the pair is supported, or the reason it is not.
SupportsFn = Callable[["Task"], str | None]

_TASKS: dict[str, Task] = {}
_TECHNIQUES: dict[str, tuple[type[TechniqueSpec], ApplyFn, SupportsFn]] = {}


def register_task(task: Task) -> Task:
    """Register a task family instance under ``task.name``."""
    if task.name in _TASKS:
        raise ValueError(f"task family {task.name!r} is registered twice")
    _TASKS[task.name] = task
    return task


def register_technique(
    spec_class: type[TechniqueSpec], supports: SupportsFn | None = None
) -> Callable[[ApplyFn], ApplyFn]:
    """Decorator: register ``apply(model, spec, task)`` for ``spec_class``'s type."""
    name = spec_class.model_fields["type"].default
    if not isinstance(name, str):
        raise TypeError(f"{spec_class.__name__}.type needs a string default")

    def decorator(apply: ApplyFn) -> ApplyFn:
        if name in _TECHNIQUES:
            raise ValueError(f"technique {name!r} is registered twice")
        _TECHNIQUES[name] = (spec_class, apply, supports or (lambda task: None))
        return apply

    return decorator


def _load_all() -> None:
    # Importing the packages runs every module's registration.
    import raft.tasks  # noqa: F401
    import raft.techniques  # noqa: F401


def tasks() -> dict[str, Task]:
    _load_all()
    return dict(_TASKS)


def get_task(name: str) -> Task:
    _load_all()
    try:
        return _TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task family {name!r}; known: {sorted(_TASKS)}") from None


def techniques() -> dict[str, type[TechniqueSpec]]:
    _load_all()
    return {name: entry[0] for name, entry in _TECHNIQUES.items()}


def apply_technique(model: torch.nn.Module, spec: TechniqueSpec, task: Task) -> torch.nn.Module:
    _load_all()
    return _TECHNIQUES[spec.type][1](model, spec, task)


def unsupported_reason(technique: str, task: Task) -> str | None:
    """None when ``technique`` works for ``task``; otherwise why not."""
    _load_all()
    return getattr(task, "unsupported_techniques", {}).get(technique) or _TECHNIQUES[technique][2](task)
