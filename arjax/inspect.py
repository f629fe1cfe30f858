"""python -m arjax.inspect --config PATH[:ARGS] [--mesh data=16,fsdp=8] [--topology v5p:4x4x4]
                         [--no_compile] [--hbm_gib 80] [--json] [--config.FIELD=VALUE ...]

Prints the parameter count (from jax.eval_shape: nothing is allocated) and FLOPs per token and
per train step of a config. With --mesh it also lowers and compiles the train step ahead of
time for that mesh, from shapes alone, and prints the per-device memory: parameters, optimizer
state (exact, from the shardings) and XLA's analysis of the compiled step (arguments,
temporaries = activations/gradients/workspace, peak), and whether the peak fits --hbm_gib.
--no_compile keeps the exact state bytes and skips the compile (minutes for paper sizes).

Devices: with --topology NAME the mesh is laid on a TPU topology from libtpu (`pip install
libtpu`; no TPU needed), so XLA's TPU compiler does the accounting; otherwise on fake CPU
devices (this command starts jax with as many as the mesh needs). CPU numbers are the CPU
compiler's buffer assignment: the state bytes are exact, temporaries are an estimate of what a
GPU/TPU needs (other fusions; bf16 matmuls may keep f32 copies).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from arjax import cli
from typing import Any, Dict, Optional

DEFAULT_HBM_GIB = 80.0  # an H100's 80 GB.


def inspect_config(config, mesh=None, hbm_gib: Optional[float] = None,
                   compile: bool = True) -> Dict[str, Any]:
  """Parameters and FLOPs of `config`; with `mesh` (a jax Mesh) also an AOT memory report
  (`compile=False`: the exact per-device state bytes only, from the shardings, in seconds).

  Keys: model, params, params_by_module, the FLOP counts of `arjax.train.flops.model_flops`,
  and with a mesh: mesh, memory {state, compiled, compile_seconds, devices, platform,
  device_kind}, hbm_gib, fits.
  """
  import jax
  from arjax.models import build_model
  from arjax.train.flops import model_flops
  from arjax.core.functional import FunctionalModel

  fm = FunctionalModel.abstract(lambda: build_model(config, seed=0))
  groups: Dict[str, int] = {}
  for name, sub in fm.abstract_params.items():
    groups[name] = sum(int(x.size) for x in jax.tree.leaves(sub))
  out = {"model": config.model.name, "params": fm.param_count(), "params_by_module": groups}
  if "backbone" in config.model:  # the analytic FLOP count covers transformer generators only.
    out.update(model_flops(config))
  if mesh is not None:
    from arjax.train import memory
    report = (memory.aot_train_step if compile else memory.state_report)(config, mesh)
    hbm = DEFAULT_HBM_GIB if hbm_gib is None else float(hbm_gib)
    out.update(mesh=report["mesh"], memory=report, hbm_gib=hbm, fits=memory.fits(report, hbm))
  return out


def mesh_from(mesh_sizes: Dict[str, int], topology: Optional[str] = None):
  """A Mesh of the requested sizes on this process's devices or on a TPU topology."""
  import jax
  import numpy as np
  from arjax import parallel
  total = int(np.prod(list(mesh_sizes.values())))
  if topology:
    try:
      from jax.experimental import topologies
      devices = topologies.get_topology_desc(platform="tpu", topology_name=topology).devices
    except Exception as e:  # pylint: disable=broad-except
      raise RuntimeError(f"--topology {topology!r} needs libtpu (`pip install libtpu` matching "
                         f"jax {jax.__version__}): {e}") from None
  else:
    devices = jax.devices()
  if len(devices) < total:
    raise ValueError(f"mesh {mesh_sizes} needs {total} devices but {len(devices)} are "
                     f"available; `python -m arjax.inspect --mesh ...` starts jax with as many "
                     f"fake CPU devices as the mesh needs")
  return parallel.make_mesh(mesh_sizes, list(devices)[:total])


def _use_fake_cpu_devices(n: int) -> None:
  """Before jax starts its backends: n fake CPU devices (only CPU, so no GPU is touched)."""
  import re
  import jax
  os.environ["JAX_PLATFORMS"] = "cpu"
  jax.config.update("jax_platforms", "cpu")
  # XLA reads XLA_FLAGS when the CPU backend starts, which has not happened yet here.
  flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", ""))
  os.environ["XLA_FLAGS"] = f"{flags.strip()} --xla_force_host_platform_device_count={n}".strip()


def _fmt(n: float) -> str:
  return f"{n / 2**30:8.3f} GiB"


def print_report(spec: str, out: Dict[str, Any]) -> None:
  print(f"{spec}: {out['params']:,} parameters ({out['params'] / 1e6:.1f}M)")
  for k, v in out["params_by_module"].items():
    print(f"  {k:20s} {v:>15,}")
  if "forward_per_token" in out:
    print(f"forward FLOPs/token {out['forward_per_token']:.4g}; train FLOPs/step "
          f"{out['train_flops_per_step']:.4g} ({out['tokens_per_step']} tokens)")
  if "memory" not in out:
    return
  m = out["memory"]
  mesh = ",".join(f"{k}={v}" for k, v in out["mesh"].items())
  how = ("not compiled: state only" if m["compile_seconds"] is None else
         f"compiled in {m['compile_seconds']:.1f}s")
  print(f"per-device memory on mesh {mesh} ({m['devices']} x {m['platform']} "
        f"{m['device_kind']}; {how}):")
  s, c = m["state"], m["compiled"]
  print(f"  parameters        {_fmt(s['params'])}")
  print(f"  optimizer state   {_fmt(s['opt_state'])}")
  if s.get("ema_params"):
    print(f"  EMA               {_fmt(s['ema_params'])}")
  if c:
    print(f"  arguments         {_fmt(c['argument'])}  (state + batch)")
    print(f"  temporaries       {_fmt(c['temp'])}  (activations, gradients, workspace)")
    print(f"  peak              {_fmt(c['peak'])}  = arguments + outputs - donated + temporaries")
    verdict = "fits" if out["fits"] else "does NOT fit"
    print(f"  {verdict} in {out['hbm_gib']:g} GiB of HBM per device")


def main(argv=None):
  parser = cli.ArgumentParser(prog="python -m arjax.inspect", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", help=cli.CONFIG_HELP)
  parser.add_argument("--mesh", default="", help="e.g. data=16,fsdp=8: compile the train step "
                      "ahead of time for this mesh and report per-device memory")
  parser.add_argument("--topology", default="", help="TPU topology for --mesh, e.g. v5p:4x4x4 "
                      "(needs libtpu); default: fake CPU devices")
  parser.add_argument("--hbm_gib", type=float, default=DEFAULT_HBM_GIB,
                      help="device memory to check the peak against (GiB)")
  parser.add_argument("--no_compile", action="store_true", help="with --mesh: per-device "
                      "state bytes from the shardings only (seconds), no compiled step")
  parser.add_argument("--json", action="store_true", help="print JSON only")
  args, config = cli.parse_with_config(parser, argv if argv is not None else sys.argv[1:])
  mesh_sizes = None
  # Loading the config above started no jax backend (config files build ConfigDicts, parts
  # declare dataclasses), so the fake CPU devices below are still set before jax starts.
  if args.mesh:
    import numpy as np
    from arjax.parallel.checks import parse_mesh
    mesh_sizes = parse_mesh(args.mesh)
    if not args.topology:
      _use_fake_cpu_devices(int(np.prod(list(mesh_sizes.values()))))
  mesh = mesh_from(mesh_sizes, args.topology or None) if mesh_sizes else None
  out = inspect_config(config, mesh=mesh, hbm_gib=args.hbm_gib, compile=not args.no_compile)
  if args.json:
    print(json.dumps(out))
  else:
    print_report(args.config, out)
  return 0


if __name__ == "__main__":
  sys.exit(cli.run(main))
