"""colabs/quickstart.ipynb runs top to bottom with the smoke settings."""
import os

import nbformat
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_notebook_executes(monkeypatch):
  monkeypatch.setenv("ARJAX_SMOKE", "1")
  path = os.path.join(ROOT, "colabs", "quickstart.ipynb")
  nb = nbformat.read(path, as_version=4)
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": os.path.join(ROOT, "colabs")}}).execute()
  outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                    for o in c.get("outputs", []))
  assert "parameters" in outputs and "test bits/dim on 256 images" in outputs
  assert "(10, 14, 14, 1) uint8" in outputs
