"""One registry per kind of part: configs name parts, registries resolve the names."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Generic, Optional, Type, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
  """Maps the names that configs use to the builders of one kind of part."""

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: Dict[str, T] = {}
    self._fields: Dict[str, Optional[Type]] = {}

  def register(self, name: str, fields: Optional[Type] = None) -> Callable[[T], T]:
    """Registers a builder under `name`. `fields`: a frozen dataclass declaring every config
    field the part reads (with defaults); `read_fields` checks a config node against it."""
    def decorator(obj: T) -> T:
      if name in self._entries:
        raise ValueError(f"{self.kind} {name!r} is registered twice")
      self._entries[name] = obj
      self._fields[name] = fields
      return obj
    return decorator

  def fields(self, name: str, field: str = "") -> Optional[Type]:
    """The declared fields dataclass of part `name` (None: the part declares none)."""
    self.get(name, field)
    return self._fields[name]

  def get(self, name: str, field: str = "") -> T:
    if name not in self._entries:
      where = f" (config field {field!r})" if field else ""
      raise KeyError(
          f"unknown {self.kind} {name!r}{where}; expected one of {sorted(self._entries)}")
    return self._entries[name]

  def names(self):
    return sorted(self._entries)

  def __contains__(self, name: str) -> bool:
    return name in self._entries

  def __repr__(self) -> str:
    return f"Registry({self.kind}: {self.names()})"


def build(registry: Registry, name: str, *args: Any, field: str = "", **kwargs: Any):
  return registry.get(name, field)(*args, **kwargs)


def read_fields(fields_cls: Type, node: Any, where: str, ignore=("name",)):
  """Config node (ConfigDict / dict / None) -> fields_cls(**values), the declared defaults for
  fields the node does not set. An undeclared field fails naming the part and the field:
  `where` is how to call the part in that message, e.g. "order 'raster' (config.order)"."""
  known = {f.name for f in dataclasses.fields(fields_cls)}
  given = {} if node is None else {k: node[k] for k in node.keys() if k not in ignore}
  extra = sorted(set(given) - known)
  if extra:
    raise ValueError(f"unknown field(s) {extra} for {where}; it declares {sorted(known)}")
  return fields_cls(**given)
