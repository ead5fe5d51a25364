"""Typed configuration files: dataclasses (sections of dataclasses) built from YAML or a dict, with
``section.key=value`` overrides whose values are read as YAML and checked against the field types. The tokenizer
trainer (`meditok.tokenizer.training.config`) and the AR trainer (`meditok.ar.train`) both load theirs with it.

>>> cfg = load_typed_config(TrainConfig, "train.yaml", ["run.steps=20", "optim.lr=1e-3"])

Unknown keys, wrong types (``steps: ten``, ``deepspeed: maybe``) and nulls where a field does not allow them are
errors that name the dotted key."""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def _convert(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if value is None:
        if annotation is type(None) or type(None) in args:
            return None
        raise ValueError(f"{where}: null is not allowed")
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        inner = [a for a in args if a is not type(None)]
        errors = []
        for candidate in inner:  # the first type the value fits, in the order the annotation names them
            try:
                return _convert(value, candidate, where)
            except ValueError as error:
                errors.append(str(error))
        raise ValueError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {inner}")
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        return [_convert(v, args[0], where) for v in value] if args else list(value)
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ValueError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_convert(v, a, where) for v, a in zip(value, args))
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{where}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        return str(value)
    return value


def build_dataclass(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """``cls(**data)`` with every value converted to its field's type (nested dataclasses from nested mappings)."""
    if not isinstance(data, dict):
        raise ValueError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown config keys {[f'{where}{k}' for k in unknown]}; known: {sorted(names)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = build_dataclass(hint, value, f"{where}{name}.")
        else:
            kwargs[name] = _convert(value, hint, f"{where}{name}")
    return cls(**kwargs)


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set ``section.key=value`` (the value read as YAML) in the nested mapping ``data``."""
    if "=" not in item:
        raise ValueError(f"override {item!r} must look like section.key=value")
    dotted, raw = (part.strip() for part in item.split("=", 1))
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {dotted}: {key} is not a section")
    node[keys[-1]] = yaml.safe_load(raw)


def load_typed_config(
    cls: type[T], source: str | os.PathLike | dict[str, Any] | None = None, overrides: typing.Sequence[str] = ()
) -> T:
    """``cls`` from a YAML file, a dict or the defaults (None), then the ``section.key=value`` overrides."""
    if source is None:
        data: dict[str, Any] = {}
    elif isinstance(source, dict):
        data = copy_mapping(source)
    else:
        data = yaml.safe_load(Path(source).read_text()) or {}
    for item in overrides:
        apply_override(data, item)
    return build_dataclass(cls, data)


def copy_mapping(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of nested mappings (the overrides never change the caller's dict)."""
    return {k: copy_mapping(v) if isinstance(v, dict) else v for k, v in data.items()}
