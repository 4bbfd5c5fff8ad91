"""Settings from flags, the environment and a TOML file, by the fields of ``BrokerConfig``.

Precedence, highest first: a ``brokerd`` flag, the environment variable
``LOCKGATE_<NAME>``, a key of the TOML file given by ``--config`` (or ``LOCKGATE_CONFIG``),
the field's default. Each field's declaration (``broker/config.py``: its type and its
``metadata``) is the only place a setting is described: ``specs`` turns the fields into
``Spec``s, from which this module builds the click options, reads the environment and
the file, checks each value and writes ``--print-config`` and the docs' table.

A value that cannot be used raises ``ConfigError``, one line naming the setting and
where the value came from. Unknown ``LOCKGATE_*`` variables are ignored (``brokerctl``
reads ``LOCKGATE_ADDR``); an unknown key in the file is an error.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any, TypeVar

import click

from .config import SETTING_KEYS, BrokerConfig

#: Prefix of every setting's environment variable.
ENV_PREFIX = "LOCKGATE_"
#: The environment variable naming the config file when ``--config`` is not given.
CONFIG_ENV = "LOCKGATE_CONFIG"
#: Parameter names of ``brokerd`` itself, which no setting may take.
RESERVED = frozenset({"config", "print_config", "json", "test_power_journal", "help"})

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_KINDS = (bool, int, float, str, Path)
_F = TypeVar("_F", bound=Callable[..., Any])


class Source(StrEnum):
    """Where a value came from, highest precedence first."""

    FLAG = "flag"
    ENV = "env"
    FILE = "file"
    DEFAULT = "default"


@dataclass(frozen=True, slots=True)
class Origin:
    """A value's source and, but for defaults, the flag, variable or file that gave it."""

    source: Source
    where: str = ""

    def __str__(self) -> str:
        return f"{self.source} {self.where}" if self.where else str(self.source)


class ConfigError(ValueError):
    """A setting that cannot be used: ``str()`` is one line naming it and its origin."""

    def __init__(self, message: str, setting: str = "", origin: Origin | None = None) -> None:
        super().__init__(f"{setting} (from {origin}): {message}" if setting and origin else message)
        self.setting = setting
        self.origin = origin


@dataclass(frozen=True, slots=True)
class Spec:
    """One setting, as its field declares it."""

    name: str
    #: ``bool``, ``int``, ``float``, ``str``, ``Path`` or a ``StrEnum`` subclass.
    kind: type
    #: The type is ``kind | None``.
    optional: bool
    default: Any
    help: str
    flag: str
    lo: float | None
    hi: float | None
    choices: tuple[str, ...]
    check: Callable[[Any], None] | None

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    def from_text(self, text: str, origin: Origin) -> Any:
        """The value of a flag or an environment variable."""
        if self.optional and text == "":
            return None
        kind = self.kind
        value: Any
        if kind is bool:
            word = text.strip().lower()
            if word not in _TRUE | _FALSE:
                raise ConfigError(f"{text!r} is not a boolean (true or false)", self.name, origin)
            value = word in _TRUE
        elif kind is int:
            try:
                value = int(text.strip())
            except ValueError:
                raise ConfigError(f"{text!r} is not an integer", self.name, origin) from None
        elif kind is float:
            try:
                value = float(text.strip())
            except ValueError:
                raise ConfigError(f"{text!r} is not a number", self.name, origin) from None
        elif kind is Path:
            if not text:
                raise ConfigError("must not be empty", self.name, origin)
            value = Path(text)
        else:
            value = text
        return self.checked(value, origin)

    def from_toml(self, value: object, origin: Origin) -> Any:
        """The value of a key in the config file."""
        kind = self.kind
        if kind is bool:
            ok = type(value) is bool
        elif kind is int:
            ok = type(value) is int
        elif kind is float:
            ok = type(value) in (int, float)
        else:
            ok = type(value) is str
        if not ok:
            raise ConfigError(f"expected {_TOML_NAMES[kind if kind in _TOML_NAMES else str]}, got "
                              f"{_toml_type(value)} ({value!r})", self.name, origin)
        if kind is float:
            value = float(value)  # type: ignore[arg-type]
        elif kind is Path:
            if not value:
                raise ConfigError("must not be empty", self.name, origin)
            value = Path(value)  # type: ignore[arg-type]
        return self.checked(value, origin)

    def checked(self, value: Any, origin: Origin) -> Any:
        """``value`` if the declaration allows it, as the field's type; else ConfigError."""
        if self.choices and value not in self.choices:
            raise ConfigError(f"{value!r} is not one of {', '.join(self.choices)}", self.name, origin)
        if isinstance(self.kind, type) and issubclass(self.kind, Enum):
            value = self.kind(value)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{value!r} is not a finite number", self.name, origin)
        if self.lo is not None and value < self.lo:
            raise ConfigError(f"{value} is below the minimum {_number(self.lo)}", self.name, origin)
        if self.hi is not None and value > self.hi:
            raise ConfigError(f"{value} is above the maximum {_number(self.hi)}", self.name, origin)
        if self.check is not None:
            try:
                self.check(value)
            except ValueError as exc:
                raise ConfigError(f"{value!r}: {exc}", self.name, origin) from None
        return value

    def values(self) -> str:
        """What it may be, in words: the choices, the range or the type."""
        if self.choices:
            text = ", ".join(self.choices)
        elif self.lo is not None or self.hi is not None:
            lo = "" if self.lo is None else _number(self.lo)
            hi = "" if self.hi is None else _number(self.hi)
            text = f"{lo} to {hi}" if lo and hi else (f"{lo} or more" if lo else f"{hi} or less")
        else:
            text = _METAVARS[self.kind if self.kind in _METAVARS else str].lower()
        return text + (", or empty for none" if self.optional else "")


_TOML_NAMES: dict[type, str] = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
_METAVARS: dict[type, str] = {bool: "BOOLEAN", int: "INTEGER", float: "NUMBER", str: "TEXT", Path: "PATH"}


def _toml_type(value: object) -> str:
    for kind, name in ((bool, "a boolean"), (int, "an integer"), (float, "a float"), (str, "a string"),
                       (list, "an array"), (dict, "a table")):
        if isinstance(value, kind):
            return name
    return f"a {type(value).__name__}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


_SPECS: dict[type, tuple[Spec, ...]] = {}


def specs(cls: type = BrokerConfig) -> tuple[Spec, ...]:
    """The settings of a config dataclass, in field order. A field without a ``help`` in
    its metadata, of a type not listed in ``broker/config.py``, or with an unknown
    metadata key is a ``TypeError`` naming it."""
    found = _SPECS.get(cls)
    if found is None:
        found = _SPECS[cls] = _specs(cls)
    return found


def _specs(cls: type) -> tuple[Spec, ...]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        where = f"{cls.__name__}.{f.name}"
        if "help" not in meta:
            raise TypeError(f"{where} is not declared as a setting: give it "
                            "metadata=setting(HELP, ...) (see broker/config.py)")
        unknown = set(meta) - SETTING_KEYS
        if unknown:
            raise TypeError(f"{where}: unknown setting metadata {sorted(unknown)}")
        if f.name in RESERVED:
            raise TypeError(f"{where}: {f.name!r} is taken by a brokerd option")
        kind, optional = _kind(hints[f.name], where)
        choices = tuple(meta.get("choices", ()))
        if issubclass(kind, Enum):
            choices = tuple(str(m.value) for m in kind)
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            raise TypeError(f"{where}: a setting needs a default")
        out.append(Spec(f.name, kind, optional, default, meta["help"],
                        meta.get("flag") or "--" + f.name.replace("_", "-"),
                        meta.get("min"), meta.get("max"), choices, meta.get("check")))
    return tuple(out)


def _kind(hint: Any, where: str) -> tuple[type, bool]:
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1 or len(typing.get_args(hint)) != 2:
            raise TypeError(f"{where}: a setting's type is one type or one type | None")
        hint, optional = args[0], True
    if hint in _KINDS or (isinstance(hint, type) and issubclass(hint, StrEnum)):
        return hint, optional
    raise TypeError(f"{where}: a setting must be str, int, float, bool, Path or a StrEnum, not {hint!r}")


# -- loading ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Loaded:
    """The effective configuration and where each value came from."""

    config: Any
    origins: Mapping[str, Origin]
    #: The config file read, and what named it; None without one.
    file: Path | None = None
    file_origin: Origin | None = None

    def toml(self) -> str:
        """The configuration as a TOML file with each value's origin in a comment (a
        setting that is None is a comment): ``brokerd --print-config``."""
        head = "# lockgate effective configuration; "
        head += f"config file {self.file} ({self.file_origin})" if self.file else "no config file"
        lines = [head]
        rows = []
        for spec in specs(type(self.config)):
            value = getattr(self.config, spec.name)
            text = f"# {spec.name} is not set" if value is None else f"{spec.name} = {_toml_value(value)}"
            rows.append((text, str(self.origins[spec.name])))
        width = max(len(text) for text, _ in rows)
        lines += [f"{text.ljust(width)}  # {origin}" for text, origin in rows]
        return "\n".join(lines) + "\n"

    def as_json(self) -> dict[str, Any]:
        """``brokerd --print-config --json``: each setting's value, source and the flag,
        variable or file that gave it."""
        settings = {}
        for spec in specs(type(self.config)):
            origin = self.origins[spec.name]
            settings[spec.name] = {"value": _json_value(getattr(self.config, spec.name)),
                                   "source": str(origin.source), "from": origin.where or None}
        return {"config_file": None if self.file is None else str(self.file), "settings": settings}


def _json_value(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    return value


def _toml_value(value: Any) -> str:
    value = _json_value(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's


def read_file(path: Path, origin: Origin) -> dict[str, Any]:
    """The keys of a TOML config file; ConfigError if it cannot be read or parsed."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path} (from {origin}): {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} (from {origin}) is not valid TOML: {exc}") from None


def load(flags: Mapping[str, Any], env: Mapping[str, str], file: Path | None = None,
         file_origin: Origin | None = None, cls: type = BrokerConfig) -> Loaded:
    """The configuration from ``flags`` (by setting name; None: not given; text, or a bool
    for a boolean), ``env`` (all of it; only ``LOCKGATE_<NAME>`` is read) and the TOML
    ``file``, each setting from the first that has it. Raises ConfigError."""
    file_origin = file_origin or Origin(Source.FLAG, "--config")
    table = read_file(file, file_origin) if file is not None else {}
    all_specs = specs(cls)
    names = {s.name for s in all_specs}
    for key in table:
        if key not in names:
            close = difflib.get_close_matches(key.replace("-", "_"), sorted(names), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"unknown setting {key!r} in config file {file}{hint}")
    values: dict[str, Any] = {}
    origins: dict[str, Origin] = {}
    for spec in all_specs:
        given = flags.get(spec.name)
        if given is not None:
            origin = Origin(Source.FLAG, spec.flag)
            value = (spec.checked(given, origin) if type(given) is bool and spec.kind is bool
                     else spec.from_text(str(given), origin))
        elif spec.env in env:
            origin = Origin(Source.ENV, spec.env)
            value = spec.from_text(env[spec.env], origin)
        elif spec.name in table:
            origin = Origin(Source.FILE, str(file))
            value = spec.from_toml(table[spec.name], origin)
        else:
            origin, value = Origin(Source.DEFAULT), spec.default
        values[spec.name] = value
        origins[spec.name] = origin
    try:
        config = cls(**values)
    except ValueError as exc:
        # A check between settings: say where each setting it names came from.
        named = [s.name for s in all_specs if s.name in str(exc)]
        whence = "; ".join(f"{n} = {_toml_value(values[n])} from {origins[n]}" for n in named)
        raise ConfigError(f"{exc} ({whence})" if whence else str(exc)) from None
    return Loaded(config, origins, file, file_origin if file is not None else None)


def load_environment(flags: Mapping[str, Any], config: Path | None, env: Mapping[str, str] | None = None,
                     cls: type = BrokerConfig) -> Loaded:
    """``load`` with the file from ``--config`` (``config``) or else ``LOCKGATE_CONFIG``,
    and the process environment unless ``env`` is given."""
    env = os.environ if env is None else env
    if config is not None:
        return load(flags, env, config, Origin(Source.FLAG, "--config"), cls)
    named = env.get(CONFIG_ENV)
    if named:
        return load(flags, env, Path(named), Origin(Source.ENV, CONFIG_ENV), cls)
    return load(flags, env, None, None, cls)


# -- the command line and the docs ---------------------------------------------------------------

def click_options(cls: type = BrokerConfig) -> Callable[[_F], _F]:
    """A decorator adding one option per setting (default None: not given); the command
    gets each as a keyword argument by setting name."""

    def decorate(f: _F) -> _F:
        for spec in reversed(specs(cls)):
            notes = [f"default: {_default_text(spec)}", f"env: {spec.env}"]
            if spec.lo is not None or spec.hi is not None:
                notes.append(spec.values())
            elif spec.optional:
                notes.append("empty for none")
            extra = "[" + "; ".join(notes) + "]"
            if spec.kind is bool:
                negative = "--no-" + spec.flag.removeprefix("--")
                f = click.option(f"{spec.flag}/{negative}", spec.name, default=None,
                                 help=f"{spec.help} {extra}")(f)
            else:
                metavar = ("[" + "|".join(spec.choices) + "]") if spec.choices else _METAVARS.get(spec.kind, "TEXT")
                f = click.option(spec.flag, spec.name, type=str, default=None, metavar=metavar,
                                 help=f"{spec.help} {extra}")(f)
        return f

    return decorate


def _default_text(spec: Spec) -> str:
    value = _json_value(spec.default)
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def markdown_table(cls: type = BrokerConfig) -> str:
    """The settings as the Markdown table in docs/operations.md ("Configuration")."""
    lines = ["| Setting (TOML key) | Flag | Environment | Default | Values | Meaning |",
             "|---|---|---|---|---|---|"]
    for spec in specs(cls):
        cells = [f"`{spec.name}`", f"`{spec.flag}`", f"`{spec.env}`", f"`{_default_text(spec)}`",
                 spec.values(), spec.help]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


#: The lines around the table in docs/operations.md.
TABLE_START = "<!-- settings table: generated by `python -m broker.settings`; do not edit by hand -->\n"
TABLE_END = "<!-- end of settings table -->"


def replace_table(text: str, cls: type = BrokerConfig) -> str:
    """``text`` (docs/operations.md) with the table between its markers regenerated."""
    start = text.index(TABLE_START) + len(TABLE_START)
    return text[:start] + markdown_table(cls) + text[text.index(TABLE_END, start):]


if __name__ == "__main__":
    # python -m broker.settings [DOC.md]: print the table, or rewrite it in DOC.md.
    import sys

    if len(sys.argv) > 1:
        doc = Path(sys.argv[1])
        doc.write_text(replace_table(doc.read_text()))
    else:
        print(markdown_table(), end="")
