"""pydantic validation errors as the user's key paths, messages and allowed values."""

from __future__ import annotations

from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from lopt.config.base import KeyedError
from lopt.config.optimizers import LOPT_KINDS
from lopt.config.tasks import TASK_KINDS

_UNION_TAGS = TASK_KINDS + LOPT_KINDS


def _error_loc(err: dict[str, Any]) -> tuple[Any, ...]:
    """The error's key path.

    An unknown union ``kind`` is reported at ``<section>.kind``, and a :class:`KeyedError`
    from a model validator at the key it names below that model.
    """
    loc = tuple(err["loc"])
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, KeyedError):
        return loc + tuple(cause.loc)
    return loc + ("kind",) if err["type"] in ("invalid_kind", "union_tag_invalid", "union_tag_not_found") else loc


def _format_loc(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item == "[key]":
            parts.append(" (the key)")  # pydantic's marker: the mapping key itself is invalid
        elif item in _UNION_TAGS and parts:
            continue  # pydantic inserts the union tag; the user never wrote it
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "<root>"


def _bare(tp: Any) -> Any:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _member_for_label(members: list[Any], label: Any) -> Any:
    """The union member pydantic names ``label`` in an error path (``list[constrained-int]``)."""
    if not isinstance(label, str):
        return None
    for prefix, origin in (("list[", list), ("tuple[", tuple), ("dict[", dict), ("literal[", Literal)):
        if label.startswith(prefix):
            return next((m for m in members if get_origin(m) is origin), None)
    plain = [m for m in members if get_origin(m) not in (list, tuple, dict, Literal)]
    return plain[0] if len(plain) == 1 else None


def _key_path(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], bool]:
    """``loc`` as the user's key path, and whether a plain union's member label was dropped.

    pydantic puts the label of the union member that failed into the path
    (``meta_train.devices.constrained-int``, ``...local_device_ids.list[constrained-int].0``)
    and the ``kind`` tag of a tagged union (``meta_train.task.image_mlp.dataset``); the user
    wrote neither. The path is walked along the model's types and those items are dropped.
    """
    out: list[Any] = []
    tp: Any = model
    dropped = False
    i = 0
    while i < len(loc):
        item, tp = loc[i], _bare(tp)
        if get_origin(tp) in (Union, UnionType):
            members = [_bare(a) for a in get_args(tp) if a is not type(None)]
            if len(members) == 1:  # X | None: no label in the path
                tp = members[0]
                continue
            if all(_is_model(m) and "kind" in m.model_fields for m in members):
                tagged = [m for m in members if m.model_fields["kind"].default == item]
                if not tagged:
                    break  # e.g. the 'kind' an unknown tag is reported at
                tp = tagged[0]
            else:
                tp = _member_for_label(members, item)
                dropped = True
            i += 1
            continue
        if _is_model(tp):
            field = tp.model_fields.get(item) if isinstance(item, str) else None
            if field is None:
                break
            out.append(item)
            tp = field.annotation
        elif get_origin(tp) in (list, tuple) and isinstance(item, int):
            out.append(item)
            args = [a for a in get_args(tp) if a is not Ellipsis]
            tp = args[min(item, len(args) - 1)] if args else None
        elif get_origin(tp) is dict:
            out.append(item)
            if i + 1 < len(loc) and loc[i + 1] == "[key]":
                i += 1
                break
            tp = get_args(tp)[1] if get_args(tp) else None
        else:
            break
        i += 1
    return tuple(out) + tuple(loc[i:]), dropped


def error_lines(exc: ValidationError, model: type[BaseModel]) -> list[str]:
    """One ``  key.path: message (allowed ...)`` line per offending key.

    The failures of every member of a plain union (``devices: 0`` is neither an int >= 1
    nor 'all') become one line listing each alternative.
    """
    merged: dict[str, tuple[list[str], list[str]]] = {}
    lines: list[str | tuple[str, ...]] = []
    for err in exc.errors():
        loc = _error_loc(err)
        path, dropped = _key_path(model, loc)
        key = _format_loc(path)
        allowed = _allowed(err, model, loc)
        if err["type"] == "value_error":  # our own validators' messages name their keys already
            err = dict(err, msg=err["msg"].removeprefix("Value error, "))
        elif err["type"] == "union_tag_not_found":  # pydantic: "Unable to extract tag using discriminator"
            err = dict(err, msg="Field required")
        if dropped and key in merged:
            msgs, hints = merged[key]
            msgs.append(err["msg"].removeprefix("Input should be ") if msgs[0].startswith("Input should be") else err["msg"])
            if allowed and allowed not in hints:
                hints.append(allowed)
            continue
        if dropped:
            merged[key] = ([err["msg"]], [allowed] if allowed else [])
            lines.append(("merged", key))
        else:
            lines.append(f"  {key}: {err['msg']}{allowed}")
    out = []
    for line in lines:
        if isinstance(line, tuple):
            msgs, hints = merged[line[1]]
            line = f"  {line[1]}: {' or '.join(msgs)}{''.join(hints)}"
        out.append(line)
    return out


def _allowed(err: dict[str, Any], model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    ctx = err.get("ctx") or {}
    if err["type"] == "extra_forbidden":
        fields = _fields_at(model, loc[:-1])
        return f" (allowed keys: {', '.join(fields)})" if fields else ""
    if "expected" in ctx:
        return "" if str(ctx["expected"]) in err["msg"] else f" (allowed values: {ctx['expected']})"
    if "pattern" in ctx:
        return f" (allowed: strings matching {ctx['pattern']})"
    if err["type"] == "union_tag_not_found":
        kinds = _kinds_at(model, loc[:-1])
        return f" (allowed values: {', '.join(repr(k) for k in kinds)})" if kinds else ""
    got = err.get("input")
    if err["type"] == "bool_type":
        return f" (got {got!r}; allowed values: true, false)"
    if err["type"] in ("int_type", "float_type", "finite_number") and isinstance(got, (bool, int, float, str)):
        return f" (got {got!r})"  # e.g. `true` where a number belongs, or .inf
    return ""


def _type_at(model: type[BaseModel], loc: tuple[Any, ...]) -> Any:
    """The model (or tagged union) reached by ``loc`` (best effort, for messages; None if lost)."""
    current: Any = model
    for item in loc:
        if isinstance(item, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            # a tagged union: pydantic puts the tag ('image_mlp') in the path
            tagged = [m for m in _union_members(current) if m.model_fields["kind"].default == item]
            current = tagged[0] if tagged else None
            continue
        if item not in current.model_fields:
            return None
        current = _unwrap(current.model_fields[item].annotation)
    return current


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the sub-model reached by ``loc`` (best effort, for messages)."""
    current = _type_at(model, loc)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return []


def _kinds_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The ``kind`` values of the tagged union reached by ``loc`` (empty if none)."""
    current = _type_at(model, loc)
    members = [] if current is None or isinstance(current, type) else _union_members(current)
    return [m.model_fields["kind"].default for m in members if "kind" in m.model_fields]


def _union_members(tp: Any) -> list[type[BaseModel]]:
    args = getattr(tp, "__args__", ()) or ()
    out: list[type[BaseModel]] = []
    for a in args:
        out.extend(_union_members(a) if getattr(a, "__args__", None) else [a])
    return [a for a in out if isinstance(a, type) and issubclass(a, BaseModel)]


def _unwrap(ann: Any) -> Any:
    args = getattr(ann, "__args__", None)
    if args is None:
        return ann
    members = _union_members(ann)
    if len(members) == 1:
        return members[0]
    if members:
        return ann  # a tagged union: resolved by the next loc item
    return _unwrap(args[0])
