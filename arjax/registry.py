"""One registry per kind of part: configs name parts, registries resolve the names."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, Generic, List, Optional, Tuple, Type, TypeVar

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


def subnodes(fields_cls: Type) -> Dict[str, Any]:
  """The sub-nodes a part declares (`SUBNODES`, a ClassVar of its fields dataclass): config
  nodes inside the part's node that are not fields, each mapped to what declares its own fields
  (a Registry: the node's `name` picks the part, e.g. the autoencoder's `model.quantizer`; a
  fields dataclass, e.g. TransformerConfig for `model.backbone`; None: a node the part reads and
  checks itself, which completion leaves alone)."""
  return dict(getattr(fields_cls, "SUBNODES", {}))


@dataclasses.dataclass(frozen=True)
class Range:
  """The accepted values of a numeric config field: [lo, hi] (an end open where `lo_open` /
  `hi_open`; None: unbounded), integers only where `integer`, and the special values `also`
  accepted outside the range (e.g. -1 for "all", 0 for "off")."""
  lo: Optional[float] = None
  hi: Optional[float] = None
  lo_open: bool = False
  hi_open: bool = False
  integer: bool = False
  also: Tuple[Any, ...] = ()

  def describe(self) -> str:
    kind = "an integer" if self.integer else "a finite number"
    if self.lo is not None and self.hi is not None:
      where = (f" in {'(' if self.lo_open else '['}{self.lo}, {self.hi}"
               f"{')' if self.hi_open else ']'}")
    elif self.lo is not None:
      where = f" {'>' if self.lo_open else '>='} {self.lo}"
    elif self.hi is not None:
      where = f" {'<' if self.hi_open else '<='} {self.hi}"
    else:
      where = ""
    also = "".join(f" or {a!r}" for a in self.also)
    return kind + where + also

  def accepts(self, value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      return False
    if value in self.also and type(value) is type(self.also[self.also.index(value)]):
      return True
    if self.integer and not isinstance(value, int):
      return False
    if not math.isfinite(value):  # NaN compares False with every bound: refuse it by name.
      return False
    if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
      return False
    if self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi):
      return False
    return True

  def check(self, path: str, value: Any) -> None:
    """Raises ValueError naming the field, the value and the accepted range."""
    if not self.accepts(value):
      raise ValueError(f"config.{path}={value!r}; expected {self.describe()}")


def ranged(default: Any, **bounds: Any) -> Any:
  """A fields-dataclass field with a declared Range (checked by `read_fields`):
  `num_steps: int = ranged(8, lo=1, integer=True)`."""
  return dataclasses.field(default=default, metadata={"range": Range(**bounds)})


def check_finite(path: str, value: Any) -> None:
  """A float config value must be finite (NaN passes every comparison-based check unseen)."""
  if isinstance(value, float) and not math.isfinite(value):
    raise ValueError(f"config.{path}={value!r}; expected a finite number")


def read_fields(fields_cls: Type, node: Any, where: str, ignore=("name",)):
  """Config node (ConfigDict / dict / None) -> fields_cls(**values), the declared defaults for
  fields the node does not set. An undeclared field fails naming the part and the field:
  `where` is how to call the part in that message, e.g. "order 'raster' (config.order)".
  Declared sub-nodes (`subnodes`) are not fields and are left out."""
  known = {f.name for f in dataclasses.fields(fields_cls)}
  skip = set(ignore) | set(subnodes(fields_cls))
  given = {} if node is None else {k: node[k] for k in node.keys() if k not in skip}
  extra = sorted(set(given) - known)
  if extra:
    raise ValueError(f"unknown field(s) {extra} for {where}; it declares {sorted(known)}")
  # `where` ends with "(config.PATH)" when the part has a config node; values are named by it.
  prefix = where.rsplit("(config.", 1)[-1].rstrip(")") if "(config." in where else where
  prefix = prefix[len("config."):] if prefix.startswith("config.") else prefix
  for f in dataclasses.fields(fields_cls):
    if f.name not in given:
      continue
    check_finite(f"{prefix}.{f.name}", given[f.name])
    if "range" in f.metadata:
      f.metadata["range"].check(f"{prefix}.{f.name}", given[f.name])
  return fields_cls(**given)


def _default(f: dataclasses.Field):
  if f.default is not dataclasses.MISSING:
    value = f.default
  elif f.default_factory is not dataclasses.MISSING:
    value = f.default_factory()
  else:
    raise TypeError(f"field {f.name!r} of a fields dataclass has no default")
  return list(value) if isinstance(value, tuple) else value  # as configs and JSON write them.


def defaults(fields_cls: Type) -> Dict[str, Any]:
  """{field: declared default} of a fields dataclass (tuples as lists, as configs hold them)."""
  return {f.name: _default(f) for f in dataclasses.fields(fields_cls)}


def fields_of(resolver: Any, node: Any, path: str) -> Tuple[Optional[Type], str]:
  """(fields dataclass, how to call the part) of the config node at `path` (e.g. 'order'),
  whose fields are declared by `resolver`: a Registry (the node's `name` names the part) or a
  fields dataclass. (None, ...) when the part declares no fields."""
  if isinstance(resolver, Registry):
    if "name" not in node:
      raise KeyError(f"config.{path} has no field 'name'; expected one of {resolver.names()}")
    return (resolver.fields(node["name"], f"{path}.name"),
            f"{resolver.kind} {node['name']!r} (config.{path})")
  return resolver, f"config.{path}"


def complete_node(resolver: Any, node: Any, path: str, skip=(), drop=()) -> List[str]:
  """Completes the config node at `path` in place: every field its part declares and the node
  does not set is added at its default; then the node is checked (`read_fields`: an undeclared
  field fails naming the part and the field). Declared sub-nodes are completed the same way.
  `skip`: keys of this node that other entries complete (nested config paths). `drop`: dotted
  paths added by an earlier completion and never set since; they are removed when the part now
  named does not declare them (an override changed the part's name). Returns the dotted paths
  of the fields added."""
  fields_cls, where = fields_of(resolver, node, path)
  if fields_cls is None:
    return []
  subs = subnodes(fields_cls)
  declared = {f.name: f for f in dataclasses.fields(fields_cls)}
  for key in list(node.keys()):
    if f"{path}.{key}" in drop and key not in declared and key not in subs:
      del node[key]
  added = []
  for name, f in declared.items():
    if name not in node:
      node[name] = _default(f)
      added.append(f"{path}.{name}")
  read_fields(fields_cls, node, where, ignore=("name",) + tuple(skip))
  for key, sub in subs.items():
    if sub is not None and key in node:
      added += complete_node(sub, node[key], f"{path}.{key}", drop=drop)
  return added
