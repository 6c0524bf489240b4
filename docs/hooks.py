"""MkDocs hook: the command and config-key references, generated from the code at build time.

A page that holds ``<!-- generated:cli -->`` gets the ``fedcond`` command reference built from
:func:`fedcond.cli.main.build_parser` (every sub-command, option, choice and default), and
``<!-- generated:config -->`` gets the config-key reference built from the dataclasses in
:mod:`fedcond.config` (every key, its type, its default and its description from the class's
``Attributes`` docstring section). Renaming a flag or a key changes these pages with it.

Neither import loads torch, Flower, Avalanche or Opacus, so the build stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from typing import Any

CLI_MARKER = "<!-- generated:cli -->"
CONFIG_MARKER = "<!-- generated:config -->"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace the generation markers of a page with the generated reference."""
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    if CONFIG_MARKER in markdown:
        markdown = markdown.replace(CONFIG_MARKER, config_reference())
    return markdown


# ------------------------------------------------------------------------------------- CLI
def _cell(text: str) -> str:
    """``text`` made safe for one cell of a markdown table (reST literals become code spans;
    ``<`` and ``>`` outside code spans are escaped, so ``train/<class>/`` is not read as HTML)."""
    parts = " ".join(str(text).split()).replace("``", "`").replace("|", "\\|").split("`")
    for i in range(0, len(parts), 2):  # even parts lie outside code spans
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts)


def _option_cell(action: argparse.Action) -> str:
    names = ", ".join(f"`{name}`" for name in action.option_strings) or f"`{action.dest}`"
    if action.nargs == 0:
        return names
    if action.choices:
        return f"{names} `{'|'.join(str(c) for c in action.choices)}`"
    metavar = action.metavar or (action.dest.upper() if action.option_strings else action.dest)
    if isinstance(metavar, tuple):
        metavar = " ".join(metavar)
    suffix = " ..." if action.nargs in ("*", "+") or isinstance(action.nargs, int) and action.nargs > 1 else ""
    return f"{names} `{metavar}{suffix}`"


def _help_cell(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    if not action.help or action.help == argparse.SUPPRESS:
        return ""
    formatter = parser._get_formatter()
    return _cell(formatter._expand_help(action))


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cli_reference() -> str:
    """Markdown for every ``fedcond`` sub-command: usage, description and an option table."""
    from fedcond.cli.main import build_parser

    parser = build_parser()
    lines = [
        "Generated from `fedcond.cli.main.build_parser()` when the documentation is built.",
        "",
        "```text",
        parser.format_usage().strip(),
        "```",
        "",
    ]
    for name, sub in _subcommands(parser).items():
        lines += [f"## `fedcond {name}`", ""]
        if sub.description:
            lines += [sub.description.strip(), ""]
        lines += ["```text", sub.format_usage().strip(), "```", ""]
        lines += ["| option | what it does |", "|---|---|"]
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            lines.append(f"| {_option_cell(action)} | {_help_cell(sub, action)} |")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- config
_ATTRIBUTES = re.compile(r"^\s*Attributes\s*\n\s*-+\s*\n", re.MULTILINE)
_ENTRY = re.compile(r"^(?P<indent>\s*)(?P<names>[A-Za-z_][\w, ]*?)(\s*:\s*(?P<type>.+))?$")


def field_descriptions(cls: type) -> dict[str, str]:
    """Field name -> description, from the numpydoc ``Attributes`` section of ``cls``'s docstring."""
    doc = cls.__doc__ or ""
    match = _ATTRIBUTES.search(doc)
    if not match:
        return {}
    described: dict[str, str] = {}
    names: list[str] = []
    base_indent: int | None = None
    for line in doc[match.end():].splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if base_indent is None:
            base_indent = indent
        if indent < base_indent:
            break
        if indent == base_indent:
            entry = _ENTRY.match(line)
            if not entry:
                break
            names = [n.strip() for n in entry.group("names").split(",") if n.strip()]
            for name in names:
                described[name] = ""
        else:
            for name in names:
                described[name] = (described[name] + " " + line.strip()).strip()
    return described


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return "str"  # its values are in the "allowed" column
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", repr(annotation))
    return text.replace("typing.", "").replace("NoneType", "None")


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return repr(f.default)
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
        return "see below" if dataclasses.is_dataclass(value) else repr(value)
    return "required"


def _dataclass_of(annotation: Any) -> type | None:
    """The dataclass inside ``annotation`` (``X`` or ``X | None``), else None."""
    candidates = typing.get_args(annotation) or (annotation,)
    for candidate in candidates:
        if isinstance(candidate, type) and dataclasses.is_dataclass(candidate):
            return candidate
    return None


def _config_rows(cls: type, prefix: str, nested_defaults: Any = None) -> list[str]:
    hints = typing.get_type_hints(cls)
    described = field_descriptions(cls)
    rows = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        inner = _dataclass_of(hints[f.name])
        if inner is not None:
            default = getattr(nested_defaults, f.name, None) if nested_defaults is not None else None
            if default is None and f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                default = f.default_factory()  # type: ignore[misc]
            note = described.get(f.name, "")
            if default is None:
                note = (note + f" Unset by default (`None`); any `{key}.*` key sets it.").strip()
            rows.append(f"| `{key}.*` | {inner.__name__} | | | {_cell(note)} |")
            rows += _config_rows(inner, f"{key}.", default)
            continue
        default = repr(getattr(nested_defaults, f.name)) if nested_defaults is not None else _default(f)
        rows.append(
            f"| `{key}` | `{_cell(_type_name(hints[f.name]))}` | `{_cell(default)}` | {_cell(_allowed(cls, f))} "
            f"| {_cell(described.get(f.name, ''))} |"
        )
    return rows


def _allowed(cls: type, f: dataclasses.Field) -> str:
    """The values the config accepts: its ``Literal`` choices or its declared range."""
    from fedcond.config import choices_of

    try:
        return ", ".join(f"`{choice}`" for choice in choices_of(cls, f.name))
    except KeyError:
        bounds = f.metadata.get("range")
        return bounds.describe().removeprefix("be ").removeprefix("lie ") if bounds is not None else ""


def config_reference() -> str:
    """Markdown for every config dataclass: one table of keys, types, defaults, allowed values and meanings."""
    from fedcond import config

    lines = [
        "Generated from the dataclasses in `fedcond/config.py` when the documentation is built.",
        "Keys are written with `_` or `-` alike (`num-clients` = `num_clients`); nested keys are",
        "dotted (`distill.ipc`) in `--set`, in Flower's `--run-config` and in TOML, or written as",
        "TOML tables (`[distill]`).",
        "",
    ]
    for name in config.__all__:
        cls = getattr(config, name)
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls) and hasattr(cls, "_check_rules")):
            continue  # Range describes a field's interval; it is not a config section
        summary = (cls.__doc__ or "").strip().split("\n\n")[0]
        lines += [f"## `{name}`", "", _cell(summary), ""]
        lines += ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
        lines += _config_rows(cls, "")
        lines.append("")
    return "\n".join(lines)
