"""Parameter files and ``--set`` overrides: a strict YAML reader for :class:`RunParams`.

Parameter files are read by a YAML loader that refuses duplicate keys and aliases (no alias
bombs), and their syntax errors name the file, line and column. Relative file paths
(:data:`PATH_PARAMETERS`) are made absolute: against the parameter file's folder when the file
gives them, so a config means the same files whatever folder the command runs in, and against
the current folder when ``--set`` gives them (as any command-line path).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from steerlib.errors import ConfigError
from steerlib.experiment.config import MAX_CONFIG_BYTES, RunParams, short_repr

__all__ = ["PATH_PARAMETERS", "load_params", "parse_overrides"]

PATH_PARAMETERS = ("challenging_source", "benign_source")
"""Parameters that may name a file; ``"hub"`` and ``"bundled"`` are not paths."""
_NOT_PATHS = frozenset({"hub", "bundled"})


# -- YAML ------------------------------------------------------------------------------------
class _ParamLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses aliases (no alias bombs) and duplicate keys."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None,
                None,
                "YAML aliases (*name) are not allowed in parameter files; write the value out",
                event.start_mark,
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # an unhashable key: the base class reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"the key {short_repr(key)} appears twice; keep one",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


# Plain values are read as YAML 1.2 reads them: only true/false are booleans (YAML 1.1 also
# turns yes, no, on, off, y and n into booleans), and 1e39 is a number (YAML 1.1: text).
_ParamLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ParamLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_ParamLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _construct_float(loader: _ParamLoader, node: Any) -> float:
    """A YAML float; one too small for a float (``1e-400``, read as 0) is refused, not 0."""
    value = yaml.SafeLoader.construct_yaml_float(loader, node)
    mantissa = re.split(r"[eE]", str(node.value))[0]
    if value == 0.0 and re.search(r"[1-9]", mantissa):
        raise yaml.constructor.ConstructorError(
            None,
            None,
            f"{node.value} is too small for a float and would be read as 0 (underflow); write 0, "
            "or a value of at least 1e-300",
            node.start_mark,
        )
    return value


_ParamLoader.add_constructor("tag:yaml.org,2002:float", _construct_float)


def _position(text: str, index: int) -> tuple[int, int]:
    """1-based ``(line, column)`` of character ``index`` of ``text``."""
    before = text[:index]
    return before.count("\n") + 1, index - (before.rfind("\n") + 1) + 1


def _parse_yaml(text: str, where: str) -> Any:
    """Parse ``text`` with the strict loader; errors become one line with line and column.

    Raises:
        ConfigError: A syntax error, a tab, an unprintable character, an alias, a duplicate
            key or a tag other than YAML's plain types.
    """
    try:
        return yaml.load(text, Loader=_ParamLoader)  # a SafeLoader subclass
    except yaml.reader.ReaderError as exc:
        line, column = _position(text, exc.position)
        char = f"U+{exc.character:04X}" if isinstance(exc.character, int) else repr(exc.character)
        raise ConfigError(
            f"{where}, line {line}, column {column}: the character {char} cannot appear in YAML; "
            "remove it."
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        hint = "; indent with spaces, not tabs" if "\\t" in problem else ""
        if "could not determine a constructor" in problem:
            hint = "; only plain YAML values (numbers, text, lists, true/false) are read"
        at = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{where}{at}: {problem}{hint}.") from None
    except yaml.YAMLError as exc:  # pragma: no cover - every YAML error above is marked
        raise ConfigError(f"{where}: {' '.join(str(exc).split())}.") from None
    except RecursionError:
        raise ConfigError(f"{where}: the YAML is nested too deeply.") from None


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings; values are YAML (``alphas=[0,1]``, ``seed=3``).

    A key given twice takes its last value, as command-line options do.

    Raises:
        ConfigError: An item has no ``=``, names no key, or its value is not valid YAML.
    """
    result: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set takes key=value, got {short_repr(item)}.")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"--set {short_repr(item)} names no parameter; write key=value.")
        result[key] = _parse_yaml(raw, f"--set {key}") if raw.strip() else None
    return result


def _read_config(path: Path) -> dict[str, Any]:
    """The mapping of a parameter file.

    Raises:
        ConfigError: The file is missing, unreadable, too large, not UTF-8, not YAML, empty
            or not a mapping.
    """
    try:
        if not path.is_file():
            raise ConfigError(f"No parameter file at {path}; pass an existing YAML file.")
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"{path} is larger than {MAX_CONFIG_BYTES // 1000} kB; a parameter file holds "
                "a few lines of name: value."
            )
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path} cannot be read ({exc.strerror or exc}).") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(
            f"{path}, line {line}, column {column}: byte 0x{data[exc.start]:02x} is not UTF-8; "
            "save the file as UTF-8."
        ) from None
    loaded = _parse_yaml(text, str(path))
    if loaded is None or loaded == {}:
        raise ConfigError(
            f"{path} holds no parameters; write name: value lines (see "
            "notebooks/configs/default.yaml), or leave --config out to use default.yaml."
        )
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"{path} must hold a mapping of parameter names to values, not {short_repr(loaded)}."
        )
    names = [key for key in loaded if not isinstance(key, str)]
    if names:
        raise ConfigError(
            f"{path}: parameter names are text, got {short_repr(names[0])}; write name: value."
        )
    return loaded


def _absolute_source(name: str, value: str, base: Path | None = None) -> str:
    """A prompt file path made absolute against ``base`` (default: the current folder).

    ``~`` is expanded first, so ``~/x.jsonl`` never depends on ``base``. Symbolic links are
    kept, so that a broken one is reported by the prompt loader.

    Raises:
        ConfigError: The path cannot be made absolute (a NUL, an unknown ``~user``).
    """
    try:
        if "\x00" in value:
            raise ValueError("it holds a NUL character")
        path = Path(value).expanduser()
        if base is not None and not path.is_absolute():
            path = base / path
        return os.path.abspath(path)
    except (OSError, RuntimeError, ValueError) as exc:
        raise ConfigError(
            f"parameter {name!r}: the path {short_repr(value)} cannot be resolved ({exc}); pass "
            "an existing JSON-lines file, 'bundled' or 'hub'."
        ) from None


def load_params(
    config: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> RunParams:
    """Read a YAML parameter file, apply overrides, and validate.

    A relative path among :data:`PATH_PARAMETERS` is resolved against the parameter file's
    folder when the file gives it, and against the current folder when an override gives it.

    Raises:
        ConfigError: The file is missing, unreadable, not UTF-8, not valid YAML (file, line
            and column), empty or not a mapping, or a parameter is wrong.
    """
    # Notebooks execute in notebooks/, so every relative file path is made absolute here.
    values: dict[str, Any] = {}
    if config is not None:
        folder = Path(os.path.abspath(Path(config).expanduser())).parent
        values.update(_absolute_paths(_read_config(Path(config)), folder))
    values.update(_absolute_paths(overrides or {}, None))
    return RunParams.validate_mapping(values)


def _absolute_paths(values: dict[str, Any], base: Path | None) -> dict[str, Any]:
    """``values`` with each relative path of :data:`PATH_PARAMETERS` resolved against ``base``."""
    result = dict(values)
    for key in PATH_PARAMETERS:
        value = result.get(key)
        if isinstance(value, str) and value not in _NOT_PATHS:
            result[key] = _absolute_source(key, value, base)
    return result
