"""One options mechanism: typed dataclasses read from YAML / ``--set`` mappings.

Every configurable thing — a config section, an algorithm, a fine-tuning
method, a codec, a strategy — declares a dataclass whose fields say their
type, default, allowed range or names, and whether they may change when a run
is resumed. `build` turns a mapping into an instance, so validation, ``--set``,
sweeps, error messages and resume checks all come from the declaration:

    @dataclass
    class SFPromptOptions:
        prune_ratio: float = option(0.5, check=in_range(0, 1, low_open=True),
                                    help="share of samples kept (EL2N)")
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import MISSING, dataclass
from typing import Any, Callable, Iterable

from fedmpi.errors import ConfigError

Check = Callable[[Any], "str | None"]  # returns a complaint ("must be > 0") or None


def option(default: Any = MISSING, *, default_factory: Callable[[], Any] | None = None, check: Check | None = None,
           choices: Iterable[str] | Callable[[], Iterable[str]] | None = None, resume: bool = False,
           select: Any = None, select_by: str | None = None, help: str = "") -> Any:
    """A dataclass field with fedmpi's metadata.

    `check` validates the coerced value; `choices` (a collection, or a callable
    returning one, e.g. a registry's names) restricts a string; `resume=True`
    marks a key that may differ when a run is resumed (rounds, cadence, output).

    `select` (a Registry) makes the field a section whose dataclass is the chosen
    entry's `Options`: the entry is named by the section's own `name` key, or by
    the sibling field `select_by` (``algorithm`` picks the ``options`` section)."""
    meta = {"check": check, "choices": choices, "resume": resume, "select": select, "select_by": select_by,
            "help": help}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# -- checks -------------------------------------------------------------------
def positive(v: Any) -> str | None:
    return None if v is None or v > 0 else "must be > 0"


def at_least(low: float) -> Check:
    return lambda v: None if v is None or v >= low else f"must be >= {low}"


def in_range(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Check:
    def check(v: Any) -> str | None:
        if v is None:
            return None
        ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
        return None if ok else f"must be in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    return check


# -- coercion -------------------------------------------------------------------
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert a YAML / command-line value to the annotated type, or raise ConfigError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if _is_union(hint):
        if type(None) in args and (value is None or (isinstance(value, str)
                                                     and value.lower() in ("null", "none", "~"))):
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:  # first member that accepts the value
            try:
                return coerce(value, a, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.strip("[]").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' expects a list, got {value!r}")
        return [coerce(v, args[0], key) for v in value]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' expects a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"config key '{key}' expects true/false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"config key '{key}' expects an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key '{key}' expects an integer, got {value!r}") from None
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}' expects a number, got {value!r}")
        try:
            out = float(value)  # YAML 1.1 reads 1e-3 as a string: accept it
        except (TypeError, ValueError):
            raise ConfigError(f"config key '{key}' expects a number, got {value!r}") from None
        if not math.isfinite(out):
            raise ConfigError(f"config key '{key}' must be a finite number, got {value!r}")
        return out
    if hint is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"config key '{key}' expects a string, got {value!r}")
        return str(value)
    return value


def _closest(word: str, names: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(names), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def choices_of(f: dataclasses.Field) -> tuple[str, ...] | None:
    c = f.metadata.get("choices")
    if c is None:
        return None
    return tuple(c() if callable(c) else c)


def check_field(f: dataclasses.Field, value: Any, key: str) -> None:
    allowed = choices_of(f)
    if allowed is not None and value is not None and value not in allowed:
        raise ConfigError(f"unknown {key} '{value}'{_closest(value, allowed)}; choose one of: {', '.join(allowed)}")
    check = f.metadata.get("check")
    if check is not None and value is not None:
        items = value if isinstance(value, list) else [value]
        for item in items:
            complaint = check(item)
            if complaint:
                raise ConfigError(f"{key} {complaint}, got {item!r}")


def build(cls: type, data: dict[str, Any] | None, prefix: str = "", what: str | None = None) -> Any:
    """An instance of dataclass `cls` from a mapping: unknown keys, wrong types and
    out-of-range values are ConfigErrors naming the dotted key. Nested dataclass
    fields are built recursively; fields left out keep their defaults (checked too)."""
    data = {} if data is None else data
    where = prefix.rstrip(".") or "root"
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{where}' must be a mapping, got {data!r}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    selected: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            owner = f" for {what}" if what else ""
            known = f"; known: {', '.join(prefix + n for n in fields) or 'none'}" if what else ""
            raise ConfigError(f"unknown config key '{prefix}{key}'{owner}"
                              f"{_closest(prefix + str(key), [prefix + n for n in fields])}{known}")
        hint = hints[key]
        if fields[key].metadata.get("select") is not None:
            selected[key] = value
        elif dataclasses.is_dataclass(hint):
            kwargs[key] = build(hint, value or {}, f"{prefix}{key}.")
        else:
            kwargs[key] = coerce(value, hint, f"{prefix}{key}")
    for name, f in fields.items():  # sections left out: their defaults, validated like given ones
        if name not in kwargs and dataclasses.is_dataclass(hints[name]) and f.metadata.get("select") is None:
            kwargs[name] = build(hints[name], {}, f"{prefix}{name}.")
    for name, f in fields.items():  # sections typed by a registry entry, after their selector
        registry = f.metadata.get("select")
        if registry is not None:
            kwargs[name] = build_selected(f, registry, selected.get(name), kwargs, f"{prefix}{name}", fields)
    out = cls(**kwargs)
    for name, f in fields.items():
        if not dataclasses.is_dataclass(hints[name]) and f.metadata.get("select") is None:
            check_field(f, getattr(out, name), f"{prefix}{name}")
    post = getattr(out, "validate", None)
    if callable(post):
        post()
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def build_selected(f: dataclasses.Field, registry: Any, value: Any, siblings: dict[str, Any], key: str,
                   fields: dict[str, dataclasses.Field]) -> Any:
    """The Options instance of the registry entry a section names."""
    by = f.metadata.get("select_by")
    if by:
        value = {} if value is None else value
        if not isinstance(value, dict):
            raise ConfigError(f"config section '{key}' must be a mapping, got {value!r}")
        return build_choice(registry, siblings.get(by, _default(fields[by])), value, key, named=False)
    return build_choice(registry, getattr(_default(f), "name", None), value, key)


def build_choice(registry: Any, default_name: str | None, value: Any, key: str, named: bool = True) -> Any:
    """`value` (a mapping with `name`, or just the name) as the chosen entry's Options.
    With named=False the entry is `default_name` and the mapping holds only options."""
    value = {} if value is None else value
    if isinstance(value, str) and named:  # `transport.up: int8` is short for `{name: int8}`
        value = {"name": value}
    if not isinstance(value, dict):
        raise ConfigError(f"config section '{key}' must be a mapping, got {value!r}")
    value = dict(value)
    if named:
        name = coerce(value.get("name", default_name), str, f"{key}.name")
        value["name"] = name
    else:
        name = default_name
    cls = registry.get(name)
    opts = getattr(cls, "Options", NoOptions)
    what = f"{registry.key} '{name}'"
    known = {x.name for x in dataclasses.fields(opts)}
    for k in value:
        if k not in known:
            owners = [other for other in registry.names() if other != name
                      and k in {x.name for x in dataclasses.fields(getattr(registry.get(other), "Options", NoOptions))}]
            if owners:
                raise ConfigError(f"config key '{key}.{k}' does not apply to {what}: it is an option of "
                                  f"{' and '.join(repr(o) for o in owners)}; {what} takes: "
                                  f"{', '.join(f'{key}.{n}' for n in sorted(known)) or 'no options'}")
    return build(opts, value, f"{key}.", what=what)


def resumable(obj: Any, prefix: str = "") -> set[str]:
    """Dotted keys of config `obj` (recursively) that may change when a run is resumed."""
    out: set[str] = set()
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out |= resumable(value, f"{prefix}{f.name}.")
        elif f.metadata.get("resume"):
            out.add(prefix + f.name)
    return out


@dataclass
class NoOptions:
    """For plug-ins without knobs: any key is an error."""
