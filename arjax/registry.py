"""One registry per kind of part: configs name parts, registries resolve the names."""
from __future__ import annotations

from typing import Any, Callable, Dict, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
  """Maps the names that configs use to the builders of one kind of part."""

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: Dict[str, T] = {}

  def register(self, name: str) -> Callable[[T], T]:
    def decorator(obj: T) -> T:
      if name in self._entries:
        raise ValueError(f"{self.kind} {name!r} is registered twice")
      self._entries[name] = obj
      return obj
    return decorator

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
