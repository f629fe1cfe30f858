"""Per-device memory of every paper-size config in the repo at one realistic mesh.

  python experiments/scaling_table.py [--mesh data=4,fsdp=8] [--out docs/scaling_table.md]

Finds every config under configs/ whose module has a `SIZES` table (the `:size=...` argument),
and for each size reports parameters (eval_shape), forward FLOPs per token, train FLOPs per step
and the exact per-device bytes of parameters and AdamW state on the mesh, from the shardings
alone (`arjax.inspect --no_compile`: seconds per config). Activation memory needs a compile
(`python -m arjax.inspect --config C --mesh M`, minutes per config on a CPU); the compiled rows
measured so far are in docs/scaling.md. The default mesh, 4 hosts x 8 accelerators with FSDP
inside a host, divides every config's global batch here.
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def paper_configs():
  """[(path relative to the repo, size)] for every config with a SIZES table."""
  out = []
  for path in sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.py"), recursive=True)):
    spec = importlib.util.spec_from_file_location("_cfg", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sizes = getattr(module, "SIZES", None)
    if isinstance(sizes, dict):
      out += [(os.path.relpath(path, ROOT), size) for size in sizes]
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--mesh", default="data=4,fsdp=8")
  p.add_argument("--out", default=None, help="also write the table to this markdown file")
  args = p.parse_args(argv)

  import numpy as np
  from arjax.parallel.checks import parse_mesh
  mesh_sizes = parse_mesh(args.mesh)
  n = int(np.prod(list(mesh_sizes.values())))
  os.environ["JAX_PLATFORMS"] = "cpu"
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"

  from arjax.config import load_config
  from arjax.inspect import inspect_config, mesh_from
  mesh = mesh_from(mesh_sizes)
  rows = ["| config | params | fwd GFLOP/token | train PFLOP/step | batch | params GiB/dev "
          "| Adam GiB/dev |", "|---|---|---|---|---|---|---|"]
  configs = paper_configs()
  t0 = time.time()
  for i, (path, size) in enumerate(configs):
    config = load_config(f"{path}:size={size}")
    out = inspect_config(config, mesh=mesh, compile=False)
    s = out["memory"]["state"]
    rows.append(f"| `{path}:size={size}` | {out['params'] / 1e6:,.1f}M | "
                f"{out['forward_per_token'] / 1e9:.2f} | "
                f"{out['train_flops_per_step'] / 1e15:.2f} | {config.train.batch_size} | "
                f"{s['params'] / 2**30:.3f} | {s['opt_state'] / 2**30:.3f} |")
    print(f"[{i + 1}/{len(configs)}] {path}:size={size} {out['params']:,} params "
          f"({time.time() - t0:.0f}s)", file=sys.stderr, flush=True)
  table = "\n".join(rows)
  header = (f"Mesh {args.mesh} ({n} devices), float32 parameters and AdamW state, from the "
            f"shardings (`python experiments/scaling_table.py --mesh {args.mesh}`).\n\n")
  print(header + table)
  if args.out:
    with open(args.out, "w") as f:
      f.write(header + table + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
