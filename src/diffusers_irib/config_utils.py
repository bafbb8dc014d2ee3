"""What every configuration dataclass of the package shares: JSON round trips and value checks.

``DegradationConfig`` and ``AdapterSetConfig`` are plain dataclasses (as peft's ``LoraConfig``) that
validate themselves and round-trip through JSON; the checks here raise ``ValueError`` naming the
field and the value, so a bad config file says what is wrong with it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from typing import Any, TypeVar, Union

__all__ = [
    "JSONConfigMixin",
    "check_distribution",
    "check_positive_int",
    "check_positive_number",
    "check_probability",
    "check_range",
    "is_int",
    "is_number",
]

ConfigT = TypeVar("ConfigT", bound="JSONConfigMixin")


def is_int(value: Any) -> bool:
    """An int that is not a bool (``True`` is an int to Python, never a rank or a size to us)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_positive_int(name: str, value: Any) -> None:
    if not is_int(value) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_positive_number(name: str, value: Any) -> None:
    if not is_number(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def check_probability(name: str, value: Any) -> None:
    if not is_number(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")


def check_range(name: str, value: Any, positive: bool = False, nonnegative: bool = True) -> None:
    """A finite (min, max) pair with min <= max, optionally > 0 or >= 0."""
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(is_number(v) for v in value):
        raise ValueError(f"{name} must be a (min, max) pair of finite numbers, got {value!r}")
    low, high = value
    if low > high:
        raise ValueError(f"{name} has min > max: {value!r}")
    if positive and low <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    if nonnegative and low < 0:
        raise ValueError(f"{name} must not be negative, got {value!r}")


def check_distribution(name: str, value: Any, length: int | None = None) -> None:
    """Probabilities that sum to 1 (optionally exactly ``length`` of them)."""
    if not isinstance(value, (tuple, list)):
        raise ValueError(f"{name} must be a list of probabilities, got {value!r}")
    if length is not None and len(value) != length:
        raise ValueError(f"{name} must have {length} entries, got {value!r}")
    if not all(is_number(p) and 0.0 <= p <= 1.0 for p in value):
        raise ValueError(f"{name} entries must be probabilities in [0, 1], got {value!r}")
    if abs(sum(value) - 1.0) > 1e-6:
        raise ValueError(f"{name} must sum to 1, got {value!r} (sum {sum(value)})")


class JSONConfigMixin:
    """JSON round trips for a validated dataclass: ``to_dict``/``from_dict``/``*_json_string``/``*_json_file``.

    ``from_dict`` refuses unknown keys (a typo in a config file must not be silently ignored) and
    builds the object through its constructor, so the dataclass's own validation runs.
    """

    #: What the objects are called in error messages ("adapter set config", "degradation config").
    config_kind = "config"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: tuples become lists."""

        def plain(value: Any) -> Any:
            if isinstance(value, (list, tuple)):
                return [plain(v) for v in value]
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            return value

        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path: Union[str, os.PathLike]) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json_string())

    @classmethod
    def _check_unknown_keys(cls, data: Mapping[str, Any], unknown: list[str]) -> None:
        """Hook for subclasses that can explain unknown keys better (e.g. a newer format version)."""
        raise ValueError(f"unknown {cls.config_kind} field(s): {unknown}")

    @classmethod
    def from_dict(cls: type[ConfigT], data: Mapping[str, Any]) -> ConfigT:
        if not isinstance(data, Mapping):
            raise ValueError(f"a {cls.config_kind} must be a JSON object (dict), got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            cls._check_unknown_keys(data, unknown)
        return cls(**dict(data))

    @classmethod
    def from_json_string(cls: type[ConfigT], text: str) -> ConfigT:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{cls.config_kind} is not valid JSON: {err}") from None
        return cls.from_dict(data)

    @classmethod
    def from_json_file(cls: type[ConfigT], path: Union[str, os.PathLike]) -> ConfigT:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            return cls.from_json_string(text)
        except ValueError as err:
            raise ValueError(f"{os.fspath(path)}: {err}") from None
