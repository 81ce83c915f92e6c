"""A YAML file read for validation: line numbers of keys, and problems that name them.

`read_yaml` keeps the node tree next to the data so a schema error found later can be put
back on its line (`locate`); PyYAML's silent last-wins for repeated keys is reported
(`duplicate_keys`). `Problem` renders as ``file:line: where: message``, the form editors
and CI logs jump to. The schema itself (switch.config) is not known here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

Loc = tuple[int | str, ...]  # a key path: "tenants", 0, "users"


@dataclass(frozen=True, slots=True)
class Problem:
    file: Path
    line: int | None
    where: str  # the key path, e.g. "tenants[0].users[1].extension"; "" for the whole file
    message: str

    def __str__(self) -> str:
        place = f"{self.file}:{self.line}" if self.line is not None else str(self.file)
        where = f"{self.where}: " if self.where else ""
        return f"{place}: {where}{self.message}"


class ConfigError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(problems)
        self.problems = tuple(problems)

    def __str__(self) -> str:
        return "\n".join(str(problem) for problem in self.problems)


_DECIMAL = re.compile(r"-?(?:0|[1-9][0-9]*)")


class _Loader(yaml.SafeLoader):
    pass


def _construct_int(loader: yaml.SafeLoader, node: yaml.Node) -> int | str:
    # YAML 1.1 reads 0101 as octal 65 and 1:30 as sexagesimal 90. An operator writing
    # `extension: 0101` or `port: 05060` never means that, so such scalars stay text and the
    # schema decides: the extension keeps its zero, the port still parses as 5060. A phone
    # number in E.164 (+74951234567) keeps its '+' the same way.
    assert isinstance(node, yaml.ScalarNode)
    text = loader.construct_scalar(node)
    return int(text) if _DECIMAL.fullmatch(text) else text


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def read_yaml(path: Path) -> tuple[yaml.Node | None, object]:
    """The node tree and the data of the file; ConfigError when it cannot be read or parsed."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem(path, None, "", f"cannot read: {exc}")]) from None
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([_syntax_problem(path, exc)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([Problem(path, None, "", f"YAML error: {exc}")]) from None
    finally:
        loader.dispose()
    return root, data


def inside(loc: Loc, outer: Loc) -> bool:
    return len(loc) > len(outer) and loc[: len(outer)] == outer


def _syntax_problem(path: Path, exc: yaml.MarkedYAMLError) -> Problem:
    mark = exc.problem_mark or exc.context_mark
    message = f"YAML syntax error: {exc.problem or exc.context}"
    if exc.problem and exc.context and exc.context_mark:
        message += f" ({exc.context} at line {exc.context_mark.line + 1})"
    return Problem(path, mark.line + 1 if mark else None, "", message)


def duplicate_keys(path: Path, node: yaml.Node, loc: Loc, seen: set[int]) -> list[Problem]:
    """PyYAML silently keeps the last of two equal keys; the operator meant one of them."""
    if id(node) in seen:  # an alias revisits a node, possibly recursively
        return []
    seen.add(id(node))
    problems: list[Problem] = []
    if isinstance(node, yaml.MappingNode):
        first_line: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            # Keys are scalars here: a list or mapping key already failed to construct.
            name, identity = key.value, (key.tag, key.value)
            line = key.start_mark.line + 1
            if identity in first_line:
                message = f"duplicate key {name!r} (also at line {first_line[identity]})"
                problems.append(Problem(path, line, render(loc), message))
            first_line.setdefault(identity, line)
            problems += duplicate_keys(path, value, (*loc, name), seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problems += duplicate_keys(path, item, (*loc, i), seen)
    return problems


def locate(root: yaml.Node | None, loc: Loc) -> tuple[int, yaml.Node | None]:
    """The line of the deepest key or item on loc, and the node at loc if it is there."""
    if root is None:
        return 1, None
    node, line = root, root.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            found = [(k, v) for k, v in node.value if getattr(k, "value", None) == part]
            if not found:
                return line, None
            key, node = found[-1]  # the last one is what PyYAML kept
            line = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return line, None
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line, None
    return line, node


def render(loc: Loc) -> str:
    text = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
    return text.removeprefix(".")
