"""AOT memory plans of the paper recipes (3b / 9b / 27b), residual vs mHC, on simulated meshes.

Each plan compiles the full training step in a fresh process (`mhc compile`), so the numbers are
XLA's for that mesh. Writes benchmarks/results/aot_plans.md (and prints it).

    python -m benchmarks.aot_plans            # about 3 minutes on 2 CPU cores
    python -m benchmarks.aot_plans --smoke    # one reduced-depth plan (seconds)
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import subprocess
import sys

PLANS = [  # recipe, mesh (batch divides data*fsdp*expert; experts divide expert), overrides
    ("3b", "fsdp=16,expert=4", ["remat=full", "microbatches=5"]),
    ("9b", "fsdp=32,expert=4", ["remat=full", "microbatches=4"]),
    ("27b", "fsdp=32,expert=8", ["remat=full", "microbatches=5"]),
]
FIELDS = {"params": r"per device: params\s+([\d.,]+) GiB", "optimizer": r"optimizer ([\d.,]+) GiB",
          "temporaries": r"temporaries \(activations, gradients\) ([\d.,]+) GiB",
          "peak": r"peak\s+([\d.,]+) GiB", "gflops": r"FLOPs/token: ([\d.,]+) GFLOP"}


def run_plan(recipe, mesh, overrides, layers=None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    cmd = [sys.executable, "-m", "mhc", "compile", "--recipe", recipe, "--mesh", mesh,
           *(["--layers", str(layers)] if layers else []), *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip().splitlines()[-1]}")
    return {k: float(re.search(p, proc.stdout).group(1).replace(",", ""))
            for k, p in FIELDS.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", default="benchmarks/results/aot_plans.md")
    args = p.parse_args(argv)
    plans = [("3b", "fsdp=4,expert=2", ["remat=full", "batch_size=16", "seq_len=256"])] \
        if args.smoke else PLANS
    rows = ["| recipe | mesh | settings | residual peak | mHC peak | mHC / residual | "
            "params + optimizer (mHC) | temporaries (mHC) | GFLOP/token (mHC) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for recipe, mesh, overrides in plans:
        layers = 2 if args.smoke else None
        res = run_plan(recipe, mesh, [*overrides, "residual=residual"], layers)
        mhc = run_plan(recipe, mesh, [*overrides, "residual=mhc"], layers)
        rows.append(f"| {recipe} | {mesh} | {' '.join(overrides)} | {res['peak']:.2f} GiB | "
                    f"{mhc['peak']:.2f} GiB | {mhc['peak'] / res['peak']:.3f} | "
                    f"{mhc['params'] + mhc['optimizer']:.2f} GiB | {mhc['temporaries']:.2f} GiB | "
                    f"{mhc['gflops']:.2f} |")
        print(rows[-1], flush=True)
    header = (f"AOT plans, compiled per device by XLA for simulated CPU devices on "
              f"{datetime.date.today()} ({'smoke' if args.smoke else 'full depth'}); "
              f"batch and sequence as in Table 5 unless overridden.\n\n")
    text = header + "\n".join(rows) + "\n"
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
