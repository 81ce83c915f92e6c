"""A YAML file read for validation: line numbers of keys, and problems that name them.

`read_yaml` keeps the node tree next to the data so a schema error found later can be put
back on its line (`locate`, and `validation_problems` for all of a pydantic validation's
errors, with what was expected in words); PyYAML's silent last-wins for repeated keys is
reported (`duplicate_keys`). `Problem` renders as ``file:line: where: message``, the form
editors and CI logs jump to. The schema itself (switch.config) is passed in, not known here.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

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


_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "string_type": "a string",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "float_type": "a number",
    "float_parsing": "a number",
    "path_type": "a file path",
    "tuple_type": "a list",
    "model_type": "a mapping of keys",
    "greater_than": "a number greater than {gt}",
    "greater_than_equal": "a number of at least {ge}",
    "less_than_equal": "a number of at most {le}",
    "literal_error": "one of {expected}",
    "too_short": "at least {min_length} item(s)",
    "string_too_short": "a non-empty string",
}


def _without_tags(loc: Loc, tags: frozenset[str]) -> Loc:
    """``loc`` without the union tags pydantic puts after a ``routes`` key (not in the YAML)."""
    return tuple(
        part for i, part in enumerate(loc)
        if not (part in tags and i >= 2 and loc[i - 2] == "routes")
    )  # fmt: skip


def validation_problems(
    path: Path,
    root: yaml.Node | None,
    exc: ValidationError,
    model: type[BaseModel],
    own_type: str,
    tags: frozenset[str],
) -> list[Problem]:
    """The problems of a failed validation of ``model``, each on the line of its key.

    ``own_type`` is the error type of the schema's own checks (their message is shown as it
    is; ``ctx["at"]`` extends their location); ``tags`` the discriminator tags pydantic puts in
    locations after a ``routes`` key.
    """
    errors = exc.errors()
    # A list whose items failed also reports itself "too short" by the items left: noise.
    return [
        _problem(path, root, error, model, own_type, tags)
        for error in errors
        if error["type"] != "too_short" or not any(inside(e["loc"], error["loc"]) for e in errors)
    ]


def _problem(
    path: Path,
    root: yaml.Node | None,
    error: ErrorDetails,
    model: type[BaseModel],
    own_type: str,
    tags: frozenset[str],
) -> Problem:
    ctx = error.get("ctx", {})
    loc: Loc = (*_without_tags(error["loc"], tags), *ctx.get("at", ()))  # ours have no tags
    line, node = locate(root, loc)
    kind = error["type"]
    if kind == "missing":
        return Problem(path, line, render(loc[:-1]), f"missing required key {loc[-1]!r}")
    if kind == "extra_forbidden":
        allowed = _keys_at(model, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        message = f"unknown key {loc[-1]!r} ({hint}expected one of: {', '.join(allowed)})"
        return Problem(path, line, render(loc[:-1]), message)
    if kind == own_type:
        return Problem(path, line, render(loc), str(ctx["message"]))
    if kind == "union_tag_invalid":  # e.g. a route's handler: name the key and the choices
        key = str(ctx["discriminator"]).strip("'")
        line, _ = locate(root, (*loc, key))
        message = f"unknown {key} {ctx['tag']!r} (expected one of {ctx['expected_tags']})"
        return Problem(path, line, render((*loc, key)), message)
    if kind not in _EXPECTED:
        return Problem(path, line, render(loc), error["msg"])
    got = repr(node.value) if isinstance(node, yaml.ScalarNode) else show(error["input"])
    expected = _EXPECTED[kind].format(**ctx)
    if kind == "string_type" and isinstance(node, yaml.ScalarNode) and node.style is None:
        expected += f'; YAML reads {node.value} as another type, so write "{node.value}"'
    return Problem(path, line, render(loc), f"got {got} (expected {expected})")


def _keys_at(model: type[BaseModel], loc: Loc) -> list[str]:
    """The keys the model at loc accepts, found by following field annotations from ``model``."""
    annotation: Any = model
    for part in loc:
        if isinstance(part, int):
            annotation = get_args(annotation)[0]  # tuple[Item, ...]
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            annotation = annotation.model_fields[part].annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def show(value: Any) -> str:
    """A value as an error message names it: mappings and lists by kind, others by repr."""
    kinds = {type(None): "nothing", dict: "a mapping", list: "a list"}
    return kinds.get(type(value), repr(value))
