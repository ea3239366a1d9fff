"""Loading a config: YAML files plus dotted overrides into the dataclasses of
tether.config.schema, strictly validated; and back out, as YAML (to_yaml) and as `--help`
(field_docs).

Validation happens once, here, so a trainer can trust every field. Mistakes (unknown key,
wrong type, value out of range) raise ConfigError naming the key, the file and line where
the YAML set it, and for a typo the closest valid key. What a field allows is its metadata,
set by tether.config.schema.option: "help", "choices", "min", "max". A section's `instead`
(a class attribute, key -> what to set instead) explains the keys it leaves out on purpose.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from tether.config.paths import relative_to
from tether.errors import ConfigError


def load_config(cls: type, path: str | None = None, overrides: list[str] = (),
                base: list[str | Path] = ()) -> Any:
    """Build `cls` from optional YAML files and `a.b=value` overrides, validated: the `base`
    files (presets) first, then `path`, then the overrides, each setting what it names. Paths
    written in `path` are relative to its directory (tether.config.paths); the built-in
    presets' and the overrides' are relative to the working directory."""
    raw: dict = {}
    lines: dict[str, str] = {}  # dotted key -> "file:line" of the file that set it last
    for source in [*base, *([path] if path else [])]:
        file_raw, file_lines = _read_yaml(source)
        if source is path and not _is_resolved(source):
            file_raw = relative_to(file_raw, path)
        _merge(raw, file_raw)
        lines |= file_lines
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value (a dotted "
                              f"key as `--help` lists them, '=', its value)")
        _set_dotted(raw, key, _Override(value))
        lines.pop(key, None)  # the override, not the file, set this key
    cfg = _build(cls, raw, "", lambda key: f"{lines[key]}: " if key in lines else "", cls)
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def _read_yaml(path: str | Path) -> tuple[dict, dict[str, str]]:
    """A config file's mapping (dotted keys expanded) and where each key is set."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        node = yaml.compose(text)
        lines = _key_lines(node, str(path))  # also rejects duplicate keys
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        raise ConfigError(f"{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    return _expand_dotted(raw), {key: f"{path}:{line}" for key, line in lines.items()}


def given_settings(cfg: Any, path: str | None, overrides: list[str] = ()) -> str:
    """The settings a user gave (`path`'s keys, then the overrides), with the values they
    resolved to, as YAML with where each was set in a comment: the short echo of a command,
    where the whole resolved config would be hundreds of lines of defaults."""
    where: dict[str, str] = {}
    if path:
        where |= _read_yaml(path)[1]
    for item in overrides:
        where[item.partition("=")[0].strip()] = "command line"
    tree: dict = {}
    for key, at in where.items():
        parts = _leaf_parts(cfg, key.split("."))
        if parts is None:
            continue
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _Given(_lookup(cfg, parts), at)
    return "\n".join(_render(tree, 0))


class _Given:
    def __init__(self, value: Any, where: str):
        self.value, self.where = value, where


def _lookup(cfg: Any, parts: list[str]) -> Any:
    for part in parts:
        cfg = getattr(cfg, part)
    return cfg


def _leaf_parts(cfg: Any, parts: list[str]) -> list[str] | None:
    """The parts of the leaf option a dotted key sets (a key inside a mapping option sets that
    option); None for a section, or a key the config does not have."""
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(cfg) or not hasattr(cfg, part):
            return None
        cfg = getattr(cfg, part)
        if isinstance(cfg, dict):
            return parts[:i + 1]
    return None if dataclasses.is_dataclass(cfg) else parts


def _render(tree: dict, depth: int) -> list[str]:
    lines = []
    for key, node in tree.items():
        indent = "  " * depth
        if isinstance(node, _Given):
            # A list or mapping value on its one line: {prompt: question}.
            flow = None if isinstance(node.value, (list, dict)) else False
            text = yaml.safe_dump({key: node.value}, default_flow_style=flow, sort_keys=False,
                                  width=math.inf).rstrip("\n")
            lines.append(f"{indent}{text}".ljust(40) + f"  # {node.where}")
        else:
            lines += [f"{indent}{key}:", *_render(node, depth + 1)]
    return lines


def _is_resolved(path: str | Path) -> bool:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.readline() == RESOLVED


def _merge(into: dict, update: dict) -> None:
    """Deep update: a later file changes the keys it names and keeps the rest of a section."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Any) -> str:
    """The config as YAML, headed by RESOLVED: loaded again, from wherever it was copied, its
    paths mean what they meant (relative to the directory the command ran in)."""
    return RESOLVED + yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)


# The first line of a resolved config (to_yaml): its paths are not relative to the file.
RESOLVED = "# resolved: paths are relative to the directory tether ran in\n"


def field_docs(cls: type, prefix: str = "",
               defaults: Any = None) -> list[tuple[str, str, Any, str]]:
    """(dotted key, type name, default, help) for every leaf field, for --help."""
    rows = []
    hints = typing.get_type_hints(cls)
    defaults = cls() if defaults is None else defaults  # a stage may change a section's defaults
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        typ = hints[f.name]
        if dataclasses.is_dataclass(typ):
            rows += field_docs(typ, key + ".", getattr(defaults, f.name))
            continue
        help = f.metadata.get("help", "")
        if f.metadata.get("choices"):
            what = "Keys" if typing.get_origin(typ) is dict else "One of"
            help += f" {what}: {', '.join(map(str, f.metadata['choices']))}."
        rows.append((key, _type_name(typ), getattr(defaults, f.name), help))
    return rows


class _Override:
    """A command-line value: read as YAML (numbers, booleans, lists), except where the field
    is a string, which takes the text as typed (so run_dir=0123 stays '0123')."""

    def __init__(self, text: str):
        self.text = text
        try:
            self.parsed = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            self.parsed = text


def _expand_dotted(raw: dict) -> dict:
    """`optim.lr: 1e-5` at the top of a YAML file means the same as the nested form."""
    out: dict = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            value = _expand_dotted(value)
        if isinstance(key, str) and "." in key:
            _set_dotted(out, key, value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key].update(value)
        else:
            out[key] = value
    return out


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def _key_lines(node: yaml.Node | None, path: str, prefix: str = "") -> dict[str, int]:
    """Line number (1-based) of every key in a composed YAML mapping; a key given twice is
    an error (YAML would silently keep the last one)."""
    out: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = prefix + str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in out:
                raise ConfigError(f"{path}:{line}: key '{key}' is given twice (also on line "
                                  f"{out[key]})")
            out[key] = line
            out.update(_key_lines(value_node, path, key + "."))
    return out


def _first_leaf(key: str, value: Any) -> str:
    """`trian` holding {seed: 1} is matched as `trian.seed`, the key the user meant to set."""
    while isinstance(value, dict) and value:
        child, value = next(iter(value.items()))
        key = f"{key}.{child}"
    return key


def _suggest(key: str, root: type) -> str:
    """The valid key closest to a mistyped one: by the whole dotted key, else by its last
    part (so `lr` and `train.lr` both find `optim.lr`)."""
    leaves = [row[0] for row in field_docs(root)]
    close = difflib.get_close_matches(key, leaves, n=1, cutoff=0.6)
    if not close:
        last = key.rsplit(".", 1)[-1]
        by_last = {leaf.rsplit(".", 1)[-1]: leaf for leaf in leaves}
        close = [by_last[m] for m in difflib.get_close_matches(last, list(by_last), n=1,
                                                                cutoff=0.75)]
    return f" (did you mean '{close[0]}'?)" if close else ""


def _build(cls: type, raw: Any, prefix: str, where, root: type, default: Any = None) -> Any:
    """`root` is the top-level class, so a typo is matched against keys of every section.
    `default` is the instance to start from: a stage may set its own section defaults."""
    default = cls() if default is None else default
    if isinstance(raw, _Override):
        raw = raw.parsed
    if not isinstance(raw, dict):
        raise ConfigError(f"{where(prefix.rstrip('.'))}{prefix.rstrip('.')} must be a mapping "
                          f"of keys to values, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            full = prefix + str(key)
            # A key the section leaves out on purpose (another command's, or an old name) is
            # explained by the section; any other gets the closest valid key.
            instead = getattr(cls, "instead", {}).get(key)
            hint = f" ({instead})" if instead else _suggest(_first_leaf(full, raw[key]), root)
            valid = ", ".join(fields)
            raise ConfigError(f"{where(full)}unknown key '{full}'{hint}; valid keys here: {valid}")
    kwargs = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        typ, key = hints[name], prefix + name
        if dataclasses.is_dataclass(typ):
            kwargs[name] = _build(typ, raw[name], key + ".", where, root,
                                  getattr(default, name))
        else:
            kwargs[name] = _check_value(key, typ, raw[name], f.metadata, where(key))
    return dataclasses.replace(default, **kwargs)


def _check_value(key: str, typ: Any, value: Any, meta: dict, where: str) -> Any:
    if isinstance(value, _Override):
        value = value.text if typ is str else value.parsed
    if isinstance(value, dict):  # a mapping option, perhaps set key by key on the command line
        value = {k: v.text if isinstance(v, _Override) else v for k, v in value.items()}
    ok, value = _coerce(typ, value)
    if not ok:
        finite = " (finite)" if typ is float else ""
        raise ConfigError(f"{where}{key} must be {_type_name(typ)}{finite}, got {value!r}")
    choices = meta.get("choices")
    if choices and isinstance(value, dict):  # a mapping's choices are the keys it may hold
        for k in value:
            if k not in choices:
                close = difflib.get_close_matches(str(k), [str(c) for c in choices], n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ConfigError(f"{where}{key}: '{k}' is not one of {', '.join(choices)}"
                                  f"{hint}")
    items = [] if not choices or isinstance(value, dict) else \
        value if isinstance(value, list) else [value]
    for item in items:
        if item in choices:  # a list's choices are those of each of its items
            continue
        close = difflib.get_close_matches(str(item), [str(c) for c in choices], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"{where}{key} must be one of {', '.join(map(str, choices))}; got "
                          f"{item!r}{hint}")
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and value < lo:
        raise ConfigError(f"{where}{key} must be >= {lo}, got {value!r}")
    if hi is not None and value > hi:
        raise ConfigError(f"{where}{key} must be <= {hi}, got {value!r}")
    return value


def _coerce(typ: Any, value: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(typ):
            if arg is type(None) and value is None:
                return True, None
            ok, v = _coerce(arg, value)
            if ok:
                return True, v
        return False, value
    if origin is list:
        if not isinstance(value, list):
            return False, value
        (item,) = typing.get_args(typ)
        out = []
        for v in value:
            ok, v = _coerce(item, v)
            if not ok:
                return False, value
            out.append(v)
        return True, out
    if origin is dict:  # only dict[str, str]: keys and values are names
        if not isinstance(value, dict):
            return False, value
        out = {}
        for k, v in value.items():
            ok_key, k = _coerce(str, k)
            ok_value, v = _coerce(str, v)
            if not (ok_key and ok_value):
                return False, value
            out[k] = v
        return True, out
    if typ is bool:
        return isinstance(value, bool), value
    if typ is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if typ is float:
        if isinstance(value, str):  # YAML reads 1e-5 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                return False, value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return math.isfinite(value), float(value)  # nan would pass every range check
        return False, value
    if typ is str:
        # A path or name that YAML happened to read as a number is still meant as text.
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return True, str(value)
        return False, value
    return isinstance(value, typ), value


def _type_name(typ: Any) -> str:
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(typ))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(typ)[0])}"
    if origin is dict:
        return "a mapping of names to names"
    return {bool: "true or false", int: "an integer", float: "a number",
            str: "a string", type(None): "null"}.get(typ, getattr(typ, "__name__", str(typ)))
