"""Settings dataclasses from node parameters (no ROS import: a plain name -> value mapping)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


def config_from_params(cls: type[T], params: Mapping[str, Any]) -> T:
    """``cls`` (a dataclass) built from the entries of ``params`` that name its fields; defaults for the rest."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in params.items() if k in names})
