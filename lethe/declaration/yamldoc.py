"""YAML documents a person writes (policies, schemas): safe loading and error locations.

Aliases are refused (a policy or schema is small; aliases only serve YAML bombs), and each
key path is mapped to its line, so a validation error names the key and where it is.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

Path_ = tuple[str, ...]
_NAMED_KEY = re.compile(r"([\w-]+(?:\.[\w-]+)*): ")


class _NoAliasLoader(yaml.SafeLoader):
    """Safe YAML without anchors and aliases."""

    what = "document"

    def compose_node(self, parent: Any, index: Any) -> Any:  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(
                None, None, f"aliases are not allowed in a {self.what}", event.start_mark
            )
        return super().compose_node(parent, index)


@dataclass(frozen=True)
class Document:
    """A parsed YAML document and the line (1-based) of every key path in it."""

    data: Any
    lines: dict[Path_, int]

    def line_of(self, loc: Sequence[object]) -> int | None:
        """The line of the longest prefix of `loc` that names a key of the document."""
        path = tuple(str(x) for x in loc)
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return None


def _lines(node: yaml.Node, path: Path_, out: dict[Path_, int]) -> None:
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            out[(*path, str(key.value))] = key.start_mark.line + 1
            _lines(value, (*path, str(key.value)), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            _lines(value, (*path, str(i)), out)


def parse_yaml(text: str, what: str = "document") -> Document:
    """Parse one YAML document (a `what`: policy, schema); raises yaml.YAMLError or
    RecursionError when it is not one."""
    loader = _NoAliasLoader(text)
    loader.what = what
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()
    lines: dict[Path_, int] = {}
    if node is not None:
        _lines(node, (), lines)
    return Document(data, lines)


def read_document(file: Path, what: str, error: type[Exception]) -> str:
    """The text of a YAML file a person wrote; `error` (naming the file) when it cannot be
    read or is not UTF-8 text."""
    try:
        return file.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"{file}: cannot read {what} ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise error(f"{file}: {what} is not UTF-8 text") from None


def yaml_problem(exc: BaseException) -> str:
    """A one-line description of a YAML syntax problem (with its line)."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"line {mark.line + 1}: {problem}" if mark else problem


def _key(loc: Sequence[object]) -> str:
    return ".".join(str(x) for x in loc if not str(x).startswith("function-"))


def validation_message(source: str, doc: Document, err: ValidationError, what: str) -> str:
    """`source:LINE: key.path: problem (and N more)` for the first error of a validation."""
    first = err.errors()[0]
    loc = first["loc"]
    msg = first["msg"].removeprefix("Value error, ")
    # A whole-document check names its key path at the start of its message.
    named = _NAMED_KEY.match(msg) if not loc else None
    line = doc.line_of(named.group(1).split(".") if named else loc)
    where = f"{source}:{line}" if line else source
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{where}: {_key(loc) or what}: {msg}{more}"
