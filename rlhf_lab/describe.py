"""Every config key with its type, default and meaning, from the schemas themselves.

``python -m rlhf_lab describe`` prints them all; ``python -m rlhf_lab describe algo`` one group,
``python -m rlhf_lab describe algo=ppo`` one option. docs/config.md is this module's Markdown output
(``python -m rlhf_lab describe --markdown``), and a test keeps the two in sync.

A field's meaning is the string literal written under it in its dataclass (the convention every
schema here follows), read from the source with :mod:`ast`; fields inherited from a base schema
take the base's text.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from functools import lru_cache
from typing import Any, Iterator, Optional

ENGINE_GROUPS = ("model", "sft", "data", "trainer", "logger", "eval")
COMPONENT_GROUPS = ("task", "feedback", "reward", "algo")


@dataclasses.dataclass
class Key:
    """One config key: its dotted name, type, default and meaning."""

    name: str
    type: str
    default: str
    doc: str


@lru_cache(maxsize=None)
def field_docs(schema: type) -> dict[str, str]:
    """Field name -> the string literal under it, over the schema and its dataclass bases."""
    docs: dict[str, str] = {}
    for cls in reversed(schema.__mro__):
        if not dataclasses.is_dataclass(cls):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body
        for node, following in zip(body, body[1:] + [None]):
            if (
                isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[node.target.id] = " ".join(inspect.cleandoc(following.value.value).split())
    return docs


def _type_name(tp: Any) -> str:
    if isinstance(tp, str):
        return tp
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " | ".join(_type_name(a) for a in args) + (" | null" if len(args) < len(typing.get_args(tp)) else "")
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type_name(a) for a in typing.get_args(tp))}]"
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def _default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = field.default_factory()  # type: ignore[misc]
    else:
        return "(required)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (dict, list)) and not value:
        return "{}" if isinstance(value, dict) else "[]"
    # Empty or multi-line text is shown quoted, so a table row stays one line.
    return repr(value) if isinstance(value, str) and (not value or "\n" in value) else str(value)


def keys(schema: type, prefix: str) -> Iterator[Key]:
    """Every key of ``schema`` under ``prefix``, nested schemas flattened into dotted names."""
    docs = field_docs(schema)
    hints = typing.get_type_hints(schema)
    for field in dataclasses.fields(schema):
        name = f"{prefix}.{field.name}" if prefix else field.name
        tp = hints.get(field.name, field.type)
        if dataclasses.is_dataclass(tp):
            yield Key(name, tp.__name__, "", docs.get(field.name, inspect.getdoc(tp) or ""))
            yield from keys(tp, name)
        elif field.name != "name":
            yield Key(name, _type_name(tp), _default(field), docs.get(field.name, ""))


def sections(selector: Optional[str] = None) -> list[tuple[str, str, list[Key]]]:
    """(title, description, keys) per engine group and per registered component option.

    :param selector: a group (``algo``) or one option (``algo=ppo``); None: everything.
    """
    from rlhf_lab.config import RunConfig
    from rlhf_lab.errors import RlhfLabError
    from rlhf_lab.plugin_manager import get_plugin_manager

    group, _, option = (selector or "").partition("=")
    if group and group not in ENGINE_GROUPS + COMPONENT_GROUPS + ("run",):
        raise RlhfLabError(f"describe: unknown group '{group}'; groups: {', '.join(('run',) + ENGINE_GROUPS + COMPONENT_GROUPS)}")
    out = []
    if not group or group == "run":
        top = [k for k in keys(RunConfig, "") if "." not in k.name and k.name not in ENGINE_GROUPS + COMPONENT_GROUPS]
        out.append(("run", "Top-level keys of one experiment.", top))
    hints = typing.get_type_hints(RunConfig)
    for name in ENGINE_GROUPS:
        if not group or group == name:
            schema = hints[name]
            out.append((name, inspect.getdoc(schema) or "", list(keys(schema, name))))
    registry = get_plugin_manager().registry
    for kind in COMPONENT_GROUPS:
        if group and group != kind:
            continue
        components = sorted((c for c in registry.all() if c.kind == kind), key=lambda c: c.name)
        if option:
            components = [registry.get(kind, option)]  # unknown option: lists the registered ones
        for component in components:
            description = inspect.getdoc(component.schema) or ""
            out.append((f"{kind}={component.name}", description, list(keys(component.schema, kind))))
    return out


def markdown() -> str:
    """docs/config.md: every section as a table."""
    lines = [
        "# Configuration reference",
        "",
        "Generated by `python -m rlhf_lab describe --markdown` from the config schemas (a test keeps it in",
        "sync). Set any key on the command line (`sft.epochs=3`, `algo=dpo algo.beta=0.05`); a key that no",
        "schema has is an error. Component groups list one table per option; a plugin's options appear in",
        "`python -m rlhf_lab describe` once it is installed.",
        "",
    ]
    for title, description, section_keys in sections():
        lines += [f"## `{title}`", "", description, "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for key in section_keys:
            doc = key.doc.replace("|", "\\|")
            lines.append(f"| `{key.name}` | {key.type.replace('|', '/')} | `{key.default}` | {doc} |" if key.default
                         else f"| `{key.name}` | {key.type} | | {doc} |")
        lines.append("")
    return "\n".join(lines)


def text(selector: Optional[str] = None) -> str:
    """The terminal form: one block per section, one line per key."""
    blocks = []
    for title, description, section_keys in sections(selector):
        width = max((len(k.name) for k in section_keys), default=0)
        body = []
        for k in section_keys:
            body.append(f"  {k.name:<{width}}  {k.type}" + (f" = {k.default}" if k.default else ""))
            if k.doc:
                body.append(f"  {'':<{width}}  {k.doc}")
        blocks.append("\n".join([f"{title}: {description}", *body]))
    return "\n\n".join(blocks) + "\n"
