"""The package's import order (docs/architecture.md, "Layers"), checked on the source.

Every module of `arjax` is parsed with `ast`; every import it makes, at module level or inside a
function, `import arjax.x` or `from arjax.x import y`, is mapped to the layer of the imported
package. A test fails on an import that goes up the order, on two packages that import each
other (directly or through a longer cycle), and on two modules that import each other. A
subprocess checks that `import arjax.sampling` loads neither Orbax nor the trainer.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from typing import Dict, List, Set, Tuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "arjax")

# Top to bottom: a module may import from its own layer's packages (one direction only) and
# from the layers below it, never from a layer above.
LAYERS: List[Tuple[str, Tuple[str, ...]]] = [
    ("entry points", ("train.__main__", "evaluate.__main__", "sample", "inspect", "tokenize",
                      "convert", "launch", "serve", "cli")),
    ("train, evaluate", ("train", "evaluate")),
    ("data, config, loading", ("data", "config", "recipes", "loading", "")),
    ("sampling", ("sampling",)),
    ("models", ("models",)),
    ("tokenizers, orders, heads", ("tokenizers", "orders", "heads")),
    ("nn", ("nn",)),
    ("core, parallel, kernels, registry", ("core", "parallel", "kernels", "registry")),
]

# Module pairs allowed to import each other: none (the sampling cycle the generation core
# removed was the last).
ALLOWED_MUTUAL: set = set()


def _module_name(path: str) -> str:
  rel = os.path.relpath(path, ROOT)[:-len(".py")].split(os.sep)
  if rel[-1] == "__init__":
    rel = rel[:-1]
  return ".".join(rel)


def _modules() -> Dict[str, str]:
  out = {}
  for dirpath, dirnames, filenames in os.walk(PACKAGE):
    dirnames[:] = [d for d in dirnames if not d.startswith((".", "__pycache__"))]
    for f in filenames:
      if f.endswith(".py"):
        path = os.path.join(dirpath, f)
        out[_module_name(path)] = path
  return out


MODULES = _modules()


def _resolve(name: str) -> str:
  """The longest prefix of dotted `name` that is a module of the package."""
  parts = name.split(".")
  while parts and ".".join(parts) not in MODULES:
    parts.pop()
  return ".".join(parts)


def _imports(module: str, path: str) -> List[Tuple[str, int]]:
  """(imported arjax module, line) for every import in the file, at any depth."""
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out += [(_resolve(a.name), node.lineno) for a in node.names
              if a.name.split(".")[0] == "arjax"]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative: from .x import y
        anchor = package.split(".")
        anchor = anchor[:len(anchor) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
      if base.split(".")[0] != "arjax":
        continue
      for a in node.names:
        # `from arjax.kernels import decode` imports the submodule; `from arjax.kernels import
        # attention` an attribute of the package.
        sub = f"{base}.{a.name}"
        out.append((sub if sub in MODULES else _resolve(base), node.lineno))
  return sorted({(m, line) for m, line in out if m and m != module})


IMPORTS = {m: _imports(m, p) for m, p in MODULES.items()}


def _package(module: str) -> str:
  """The layering unit of a module: its entry-point name or its top-level package."""
  rest = module.split(".")[1:]
  for _, units in LAYERS:
    for unit in units:
      if unit and ".".join(rest[:len(unit.split("."))]) == unit and "." in unit:
        return unit
  return rest[0] if rest else ""


def _layer(package: str) -> int:
  for i, (_, units) in enumerate(LAYERS):
    if package in units:
      return i
  raise KeyError(package)


def test_every_module_has_a_layer():
  missing = sorted({m for m in MODULES if _package(m) not in
                    {u for _, units in LAYERS for u in units}})
  assert not missing, f"modules whose package has no layer in LAYERS: {missing}"


def _upward(imports: Dict[str, List[Tuple[str, int]]]) -> List[str]:
  """Every import in `imports` (module -> [(imported module, line)]) that goes up a layer."""
  bad = []
  for module, targets in imports.items():
    src = _package(module)
    for target, line in targets:
      dst = _package(target)
      if _layer(dst) < _layer(src):
        bad.append(f"{MODULES.get(module, module)}:{line}: {module} ({LAYERS[_layer(src)][0]}) "
                   f"imports {target} ({LAYERS[_layer(dst)][0]}), a layer above it")
  return bad


def test_imports_go_down_the_layers():
  bad = _upward(IMPORTS)
  assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def _cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
  """Strongly connected components with more than one node (Tarjan)."""
  index, low, stack, on, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in edges.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  for v in sorted(edges):
    if v not in index:
      visit(v)
  return out


def _package_cycles(imports) -> List[List[str]]:
  edges: Dict[str, Set[str]] = {}
  for module, targets in imports.items():
    for target, _ in targets:
      a, b = _package(module), _package(target)
      if a != b:
        edges.setdefault(a, set()).add(b)
  return _cycles(edges)


def _mutual_modules(imports) -> List[str]:
  edges = {m: {t for t, _ in targets} for m, targets in imports.items()}
  return sorted(f"{m} <-> {t}" for m, targets in edges.items() for t in targets
                if m < t and m in edges.get(t, ()) and frozenset({m, t}) not in ALLOWED_MUTUAL)


def test_no_two_packages_import_each_other():
  cycles = _package_cycles(IMPORTS)
  assert not cycles, f"packages that import each other (import cycles): {cycles}"


def test_no_two_modules_import_each_other():
  bad = _mutual_modules(IMPORTS)
  assert not bad, "modules that import each other: " + ", ".join(bad)


def test_the_walk_sees_function_level_and_module_level_imports():
  # Known imports of both kinds, so that a parser change that drops one kind fails here.
  got = {t for t, _ in IMPORTS["arjax.sample"]}
  assert "arjax.sampling" in got  # inside main()
  assert "arjax.loading" in got
  got = {t for t, _ in IMPORTS["arjax.nn.transformer"]}
  assert "arjax.parallel.activations" in got  # module level
  assert _layer(_package("arjax.train.__main__")) == 0
  assert _layer(_package("arjax.train.loop")) == 1


def test_the_checks_catch_what_they_must(tmp_path, monkeypatch):
  """The rules applied to made-up modules: a function-level upward import, a package cycle
  and a module pair are each reported."""
  fake = tmp_path / "fake.py"
  fake.write_text("import jax\n\ndef f():\n  from arjax.train.loop import Experiment\n"
                  "  import arjax.sampling.decode\n  from arjax.kernels import decode\n")
  monkeypatch.setitem(MODULES, "arjax.nn.fake", str(fake))
  got = _imports("arjax.nn.fake", str(fake))
  assert got == [("arjax.kernels.decode", 6), ("arjax.sampling.decode", 5),
                 ("arjax.train.loop", 4)]
  bad = _upward({"arjax.nn.fake": got})
  assert len(bad) == 2 and "arjax.train.loop (train, evaluate), a layer above" in bad[1]
  assert _package_cycles({"arjax.orders.x": [("arjax.heads.y", 1)],
                          "arjax.heads.y": [("arjax.orders.z", 2)]}) == [["heads", "orders"]]
  assert _mutual_modules({"arjax.nn.a": [("arjax.nn.b", 1)], "arjax.nn.b": [("arjax.nn.a", 1)],
                          "arjax.nn.c": [("arjax.nn.a", 1)]}) == ["arjax.nn.a <-> arjax.nn.b"]
  assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("module,forbidden", [
    ("arjax.sampling", ("orbax", "arjax.train", "arjax.data", "grain")),
    ("arjax.loading", ("arjax.train",)),
])
def test_import_does_not_load(module, forbidden):
  code = (f"import sys, {module}; bad = [m for m in sys.modules if m.split('.')[0] in "
          f"{[f.split('.')[0] for f in forbidden]!r} and any(m == f or m.startswith(f + '.') "
          f"for f in {list(forbidden)!r})]; print(sorted(bad))")
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
             JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == "[]", f"import {module} loaded {out.stdout.strip()}"
