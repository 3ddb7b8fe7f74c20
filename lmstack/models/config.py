"""The base of every model config: a dataclass that round-trips through `config.json`.

A model directory stores its architecture as JSON (`config.json`). `to_dict()` writes every
field plus `model_type` (the key of `lmstack.models.MODELS`); `from_dict()` reads it back and
refuses, with a `ConfigError` naming the field, anything it does not understand: unknown keys
(a typo would otherwise be silently ignored), wrong types and invalid values. Subclasses add
their own value checks in `validate()`, using `require(condition, message)`.

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class TinyConfig(ModelConfig):
    ...     width: int = 8
    ...     rate: float = 0.5
    ...     name: str | None = None
    ...     @property
    ...     def model_type(self) -> str:
    ...         return "tiny"
    ...     def validate(self) -> None:
    ...         require(self.width > 0, f"width {self.width} must be positive")
    >>> TinyConfig(width=4).to_dict()
    {'model_type': 'tiny', 'width': 4, 'rate': 0.5, 'name': None}
    >>> TinyConfig.from_dict({"model_type": "tiny", "width": 4, "rate": 1})
    TinyConfig(width=4, rate=1.0, name=None)
    >>> TinyConfig.from_dict({"widht": 4})
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: TinyConfig has no field 'widht'; valid fields: width, rate, name
    >>> TinyConfig(width="4")
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: TinyConfig.width must be int, got '4' (str)
    >>> TinyConfig(width=0)
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: width 0 must be positive

Run: `pytest lmstack/models/config.py tests/models/test_config.py`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from lmstack.errors import ConfigError

# Field annotations are strings (PEP 563); these are the only types configs use.
_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "bool": (bool,),
    "int | None": (int, type(None)),
    "float | None": (int, float, type(None)),
    "str | None": (str, type(None)),
    "bool | None": (bool, type(None)),
    "dict | None": (dict, type(None)),
}


def require(condition: bool, message: str) -> None:
    """Raise `ConfigError(message)` unless `condition` holds."""
    if not condition:
        raise ConfigError(message)


def require_choice(field: str, value: str, choices: Any) -> None:
    """Raise `ConfigError` unless `value` is one of the registry keys `choices`."""
    # a list or dict from a config file is unhashable: test membership only for strings
    require(isinstance(value, str) and value in choices,
            f"{field} {value!r} is not one of {sorted(choices)}; pick one of them")


class ModelConfig:
    """Mixin for model config dataclasses: type checks, `validate()`, dict round trip."""

    model_types: ClassVar[tuple[str, ...]] = ()  # the `model_type` values from_dict accepts

    @property
    def model_type(self) -> str:
        """The key of this config's model class in `lmstack.models.MODELS`."""
        raise TypeError(f"{type(self).__name__} must define the model_type property")

    def __post_init__(self) -> None:
        name = type(self).__name__
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            types = _TYPES[annotation]
            # bool is an int in Python; a config that says `n_layer: true` is still a mistake.
            ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
            require(ok, f"{name}.{f.name} must be {annotation}, got {value!r} ({type(value).__name__})")
            if float in types and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))  # JSON writes 1.0 as 1
        self.validate()

    def validate(self) -> None:
        """Check values beyond their types; subclasses raise `ConfigError` via `require`."""

    def to_dict(self) -> dict[str, Any]:
        """All fields plus `model_type`, ready for `json.dump`."""
        return {"model_type": self.model_type, **dataclasses.asdict(self)}  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        """Build a config from `to_dict()` output; unknown keys raise `ConfigError`."""
        d = dict(d)
        model_type = d.pop("model_type", None)
        if model_type is not None and cls.model_types:
            require_choice("model_type", model_type, cls.model_types)
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        for key in d:
            require(key in names, f"{cls.__name__} has no field {key!r}; valid fields: {', '.join(names)}")
        return cls(**d)
