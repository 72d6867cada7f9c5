"""Building blocks of every config model: strict scalars, the strict base model, the error type."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict

# Strict scalars: YAML `true` is not the integer 1, the string "no" is not False, a
# quoted "0.1" is not a number, and .inf / .nan are not finite floats (ints still pass
# as floats: `lr: 1`).
Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
Float = Annotated[float, Strict(), Field(allow_inf_nan=False)]
PosInt = Annotated[Int, Field(ge=1)]
PosFloat = Annotated[Float, Field(gt=0)]


def no_repeats(values: list[Any]) -> list[Any]:
    """A list's validator: each value at most once (a repeat would build, tune or report the
    same thing twice, or, for a set of features, be dropped without a word)."""
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"lists {', '.join(map(str, repeated))} more than once; give each at most once")
    return values


NoRepeats = AfterValidator(no_repeats)


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted key paths at which two resolved configs (nested dicts) differ, sorted.

    Dicts are compared key by key (a key on one side only counts as changed); anything
    else, lists included, as a whole. ``changed_keys({"a": {"b": 1, "c": 2}}, {"a": {"b": 1,
    "c": 3}})`` is ``["a.c"]``.
    """
    if isinstance(old, dict) and isinstance(new, dict):
        return sorted(
            path
            for key in old.keys() | new.keys()
            for path in changed_keys(old.get(key, _ABSENT), new.get(key, _ABSENT), f"{prefix}{key}.")
        )
    return [prefix.rstrip(".")] if old != new else []


_ABSENT = object()  # a key one side lacks: unequal to every value


class ConfigError(ValueError):
    """A config file failed validation; the message names file, key path and allowed values."""


class KeyedError(ValueError):
    """A cross-field validator's error at a key below the model that raises it.

    pydantic reports a model validator's error at the model itself (``<root>`` for a whole
    study); raising this instead lets the error lines name the key the user has to change,
    e.g. ``KeyedError(("methods", 2, "trunc_length"), "...")`` -> ``methods[2].trunc_length``.
    """

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


class _Strict(BaseModel):
    # Unknown keys are errors: a typo must never silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)



def _kind(default: str):
    """Discriminator that reads ``kind`` and falls back to ``default`` when it is omitted."""

    def get(value: Any) -> str:
        if isinstance(value, dict):
            return value.get("kind", default)
        return getattr(value, "kind", default)

    return get
