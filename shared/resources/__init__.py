"""Typed resources (msgspec structs): what operators write and the daemons exchange.

One declaration per resource gives validation, the canonical document and the
JSON Schema of the API contract. `common` holds names, labels and metadata;
each resource kind has its own module.
"""

from shared.resources.common import API_VERSION, Metadata, validate_name
from shared.resources.task import (
    CommandSpec,
    CommandTaskSpec,
    Resources,
    Task,
    TaskSpec,
    parse_task,
    task_from_document,
    to_document,
)

__all__ = [
    "API_VERSION",
    "CommandSpec",
    "CommandTaskSpec",
    "Metadata",
    "Resources",
    "Task",
    "TaskSpec",
    "parse_task",
    "task_from_document",
    "to_document",
    "validate_name",
]
