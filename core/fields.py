"""The machinery under the run schema (core/config.py): choices, bounds, and the check of every field.

- `Choice` is the base of the schema's `Enum`s: a `str` subclass whose members are named by their value, so Hydra
  rejects a value outside the set while it composes the config, naming the key; elsewhere a member compares,
  hashes, formats and serialises (JSON, YAML) as its plain string, so `cfg.mode == "eval"` and
  `{"float32": ...}[cfg.model.dtype]` hold;
- `bounded(...)` declares a dataclass field with its allowed values (`Bounds`: a range, a length, a predicate);
- `field_errors` walks a config dataclass and names every field outside its choice or bounds.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any


class Choice(str, Enum):
    """One value of a fixed set of strings. Members are named by their value (OmegaConf looks members up by name,
    so `mode=eval` on the command line finds `Mode.eval`); `str()`, `format()`, `repr()`, `==`, `hash` and JSON
    all see the plain string. (A member may shadow a `str` method of the same name: `Ties.index`.)"""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    def __repr__(self) -> str:
        return repr(self.value)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        """The allowed strings, in declaration order."""
        return tuple(member.value for member in cls)


@dataclass(frozen=True)
class Bounds:
    """What one field may hold (a field's `metadata["bounds"]`), checked by `field_errors`.

    Numbers must be finite and within `gt`/`ge`/`lt`/`le` (bounds left None do not apply), unless the value is
    one of `also`; None passes when `optional`; a list or tuple is checked item by item, and must have `length`
    items (or at least `min_length`). `check` is a predicate for what a range cannot say (a string's form, an
    existing file), with `expected` describing what it accepts.
    """

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    also: tuple[Any, ...] = ()
    optional: bool = False
    length: int | None = None
    min_length: int | None = None
    check: Callable[[Any], bool] | None = None
    expected: str = ""

    def describe(self) -> str:
        """What an allowed value looks like, as the end of the sentence `expected ...`."""
        if self.check is not None:
            return self.expected
        low = f"({self.gt:g}" if self.gt is not None else f"[{self.ge:g}" if self.ge is not None else None
        high = f"{self.lt:g})" if self.lt is not None else f"{self.le:g}]" if self.le is not None else None
        if low and high:
            text = f"in {low}, {high}"
        elif low:
            text = f"{'>' if low[0] == '(' else '>='} {low[1:]}"
        elif high:
            text = f"{'<' if high[-1] == ')' else '<='} {high[:-1]}"
        else:
            text = "a finite number"
        text = " or ".join([*(str(v) for v in self.also), text])
        if self.length is not None or self.min_length is not None:
            size = f"{self.length} values" if self.length is not None else f"at least {self.min_length} value(s)"
            text = f"{size}, each {text}"
        return f"{text} or null" if self.optional else text

    def admits(self, value: Any) -> bool:
        """Whether `value` is allowed."""
        if value is None:
            return self.optional
        if self.check is not None:
            return self.check(value)
        if isinstance(value, list | tuple):
            if self.length is not None and len(value) != self.length:
                return False
            if self.min_length is not None and len(value) < self.min_length:
                return False
            return all(self._admits_number(item) for item in value)
        return self._admits_number(value)

    def _admits_number(self, value: Any) -> bool:
        if value in self.also:
            return True
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return False
        return (
            (self.gt is None or value > self.gt)
            and (self.ge is None or value >= self.ge)
            and (self.lt is None or value < self.lt)
            and (self.le is None or value <= self.le)
        )


def bounded(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, **bounds: Any) -> Any:
    """A dataclass field with `default` (or `default_factory`) whose allowed values `Bounds(**bounds)` states."""
    metadata = {"bounds": Bounds(**bounds)}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def is_plain_name(value: str) -> bool:
    """A folder name without a path: not empty, no `/`, not hidden."""
    return bool(value) and "/" not in value and not value.startswith(".")


def is_file_or_empty(value: str) -> bool:
    """Empty, or an existing file."""
    return not value or Path(value).is_file()


def is_model_dir_or_empty(value: str) -> bool:
    """Empty, or a directory holding a `config.json` (a Hugging Face model)."""
    return not value or (Path(value) / "config.json").is_file()


def leaf_fields(node: Any, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field, type, Any]]:
    """Every leaf field under the dataclass `node`: (full key, field, declared type, value), depth first."""
    hints = typing.get_type_hints(type(node))
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            yield from leaf_fields(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, hints[f.name], value


def field_errors(cfg: Any) -> list[str]:
    """The problems of single fields anywhere under the config dataclass `cfg`, one line each naming the full key,
    the value and what was expected: a choice outside its `Enum` (possible when a config is built in Python; Hydra
    rejects one while composing) and a value outside its field's `Bounds`."""
    errors = []
    for key, f, kind, value in leaf_fields(cfg):
        if isinstance(kind, type) and issubclass(kind, Choice):
            if value not in kind.values():
                errors.append(f"{key}={value!r}: expected one of {', '.join(kind.values())}")
        bounds = f.metadata.get("bounds")
        if bounds is not None and not bounds.admits(value):
            errors.append(f"{key}={value!r}: expected {bounds.describe()}")
    return errors
