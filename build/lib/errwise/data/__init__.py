"""Data: plain frozen dataclasses (types.py), loaders for external formats (formats.py), the protocol (stream.py)."""

from errwise.data.types import Corpus, Relation, RelationInstance, Task, TaskStream

__all__ = ["Corpus", "Relation", "RelationInstance", "Task", "TaskStream"]
