"""MQTT topic names and filters (MQTT 3.1.1 §4.7), validated as pure functions.

Task triggers and, with the event bus, device mappers name topics; a filter that
a broker would refuse must be refused where an operator wrote it.
"""

from __future__ import annotations

MAX_TOPIC_BYTES = 65535


class TopicError(ValueError):
    """A topic name or filter that MQTT does not allow; the message says why."""


def validate_filter(topic: str) -> str:
    """A subscription filter: `+` fills one whole level, `#` only the whole last level."""
    _common(topic)
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise TopicError(f"topic filter {topic!r}: '#' must be the whole last level")
        if "+" in level and level != "+":
            raise TopicError(f"topic filter {topic!r}: '+' must fill a whole level")
    return topic


def validate_name(topic: str) -> str:
    """A topic to publish to: no wildcards."""
    _common(topic)
    if "+" in topic or "#" in topic:
        raise TopicError(f"topic {topic!r}: wildcards '+' and '#' are only for filters")
    return topic


def _common(topic: str) -> None:
    if not topic:
        raise TopicError("topic must not be empty")
    if "\x00" in topic:
        raise TopicError("topic must not contain NUL")
    if len(topic.encode("utf-8", "surrogatepass")) > MAX_TOPIC_BYTES:
        raise TopicError(f"topic is longer than {MAX_TOPIC_BYTES} bytes")
