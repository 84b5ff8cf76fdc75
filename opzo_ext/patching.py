"""Instance-level overrides that can be undone exactly (used for ``forward`` and
``multi_step_forward``; whatever the instance had before is put back)."""
from __future__ import annotations

from typing import Any, Callable


def override(obj: Any, name: str, value: Any) -> Callable[[], None]:
    """Set ``obj.name = value`` on the instance; return the function that restores the previous
    instance attribute (or removes ours if there was none)."""
    missing = object()
    previous = obj.__dict__.get(name, missing)
    setattr(obj, name, value)

    def restore() -> None:
        if previous is missing:
            obj.__dict__.pop(name, None)
        else:
            setattr(obj, name, previous)

    return restore
