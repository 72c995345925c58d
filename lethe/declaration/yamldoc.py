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
            # An item with a `name` (a processor) is also found by it, as messages name it.
            name = _name_of(value)
            if name is not None:
                _lines(value, (*path, name), out)


def _name_of(node: yaml.Node) -> str | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if key.value == "name" and isinstance(value, yaml.ScalarNode):
                return str(value.value)
    return None


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


class Problems(ValueError):
    """Every problem a whole-document check found, each `key.path: message`, raised at
    once so that a person sees them all in one go."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


def raise_problems(problems: Sequence[str]) -> None:
    """Raise Problems when there are any."""
    if problems:
        raise Problems(problems)


def validation_message(source: str, doc: Document, err: ValidationError, what: str) -> str:
    """Every error of a validation, one line each, in the order of the document:
    `source:LINE: key.path: problem`."""
    lines: list[tuple[int, str]] = []
    for error in err.errors():
        loc = tuple(x for x in error["loc"] if not str(x).startswith("function-"))
        cause = (error.get("ctx") or {}).get("error")
        messages = (
            cause.problems
            if isinstance(cause, Problems)
            else [error["msg"].removeprefix("Value error, ")]
        )
        for msg in messages:
            # A whole-document check names its key path at the start of its message.
            named = _NAMED_KEY.match(msg)
            line = doc.line_of([*loc, *named.group(1).split(".")] if named else loc)
            where = f"{source}:{line}" if line else source
            key = _key(loc) or ("" if named else what)
            lines.append((line or 0, f"{where}: {key}: {msg}" if key else f"{where}: {msg}"))
    return "\n".join(text for _, text in sorted(lines, key=lambda x: x[0]))
