"""setup.py's install requirements are the packages arjax imports (issue 12: einops was
required and never imported)."""
import ast
import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Distribution name -> the module it installs, where the two differ.
MODULE = {"orbax-checkpoint": "orbax", "ml-collections": "ml_collections", "pillow": "PIL",
          "absl-py": "absl", "tensorboardx": "tensorboardX"}


def _requirements():
  tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
  for node in ast.walk(tree):
    if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "INSTALL_REQUIRES":
      return [re.split(r"[<>=!~ ]", ast.literal_eval(node.value)[i])[0]
              for i in range(len(node.value.elts))]
  raise AssertionError("setup.py has no INSTALL_REQUIRES list")


def _imported_modules():
  out = set()
  for path in glob.glob(os.path.join(ROOT, "arjax", "**", "*.py"), recursive=True):
    for node in ast.walk(ast.parse(open(path).read())):
      if isinstance(node, ast.Import):
        out |= {a.name.split(".")[0] for a in node.names}
      elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        out.add(node.module.split(".")[0])
  return out


def test_every_install_requirement_is_imported_by_arjax():
  requirements = _requirements()
  assert "jax" in requirements and "flax" in requirements
  imported = _imported_modules()
  unused = [r for r in requirements if MODULE.get(r.lower(), r) not in imported]
  assert not unused, f"setup.py requires {unused}, which nothing in arjax/ imports"


# Modules arjax imports that are not its own install requirements, and why each may be.
NOT_REQUIRED = {"arjax": "the package itself", "ml_dtypes": "installed by jax",
                "array_record": "installed by grain", "portpicker": "optional, import guarded",
                "tensorflow_datasets": "the 'tfds' extra", "lpips": "optional, import guarded",
                "torchvision": "optional, import guarded"}


def test_every_third_party_import_of_arjax_is_required():
  """chex was imported by arjax/core but missing from setup.py: a fresh install failed at the
  first import of arjax.heads."""
  import sys
  wanted = {MODULE.get(r.lower(), r) for r in _requirements()}
  third_party = {m for m in _imported_modules() if m not in sys.stdlib_module_names}
  missing = sorted(third_party - wanted - set(NOT_REQUIRED))
  assert not missing, f"arjax imports {missing}, which setup.py's INSTALL_REQUIRES lacks"
