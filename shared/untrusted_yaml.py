"""YAML from someone we do not trust: bounded depth and size, no anchors or aliases.

`yaml.safe_load` is safe from code execution but not from cost: an alias
makes one node stand in many places, so a document of a few hundred bytes
("billion laughs") becomes a structure that takes hours to walk, and the
pure-Python loader takes seconds per MiB. Here the document is composed
(libyaml when present), its node graph is checked without expanding it, and
only then constructed. Run it off the event loop; it is CPU-bound.
"""

from __future__ import annotations

from typing import Any

import yaml

_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class UntrustedYamlError(ValueError):
    """The document is valid YAML but uses what untrusted input may not."""


def load_untrusted(text: str, *, max_depth: int = 32, max_nodes: int = 200_000) -> Any:
    """Parse one YAML document; raises yaml.YAMLError or UntrustedYamlError."""
    loader = _BaseLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check(node, max_depth, max_nodes)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_untrusted_or_explain(text: str, *, max_depth: int = 32) -> tuple[bool, Any]:
    """(True, value), or (False, a message for the sender): for a worker process, whose
    exceptions would carry marks and buffers back across the pipe."""
    try:
        return True, load_untrusted(text, max_depth=max_depth)
    except UntrustedYamlError as exc:
        return False, f"request body: {exc}"
    except (ValueError, OverflowError) as exc:  # a scalar YAML cannot build: 2001-13-45
        return False, f"request body: a value is not valid for its YAML type: {str(exc)[:200]}"
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        return False, f"request body is not valid YAML{where}: {problem}"


def _check(root: yaml.Node, max_depth: int, max_nodes: int) -> None:
    """Refuse shared nodes (anchors/aliases), depth and node count over the bounds."""
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if id(node) in seen:
            raise UntrustedYamlError("YAML anchors and aliases are not accepted here")
        seen.add(id(node))
        if len(seen) > max_nodes:
            raise UntrustedYamlError(f"YAML document has more than {max_nodes} nodes")
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            continue
        if depth > max_depth and children:
            raise UntrustedYamlError(f"YAML nested deeper than {max_depth} levels")
        stack.extend((child, depth + 1) for child in children)
