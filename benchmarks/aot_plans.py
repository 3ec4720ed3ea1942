"""AOT memory plans of the paper recipes (3b / 9b / 27b) and DeepSeek-V3 (dsv3-671b, H100 only),
residual vs mHC, from the compilers of the hardware they are meant for: libtpu for a TPU v5p
slice, XLA:GPU for an H100 cluster (the paper trained on H800s; H100 is the nearest compile
target), and XLA:CPU beside them.

Each plan compiles the full training step in a fresh process (`mhc compile --target ... --json`)
and is kept as one JSON file in `--raw` (reused when present: the run is resumable); the table
(`--out`, and the README's region between the aot-plans markers) is built from those files alone.

    python -m benchmarks.aot_plans --target v5p h100 cpu   # the README table (about 1 h on 2 cores)
    python -m benchmarks.aot_plans --target h100 --recipes 3b
    python -m benchmarks.aot_plans --only-finished         # rebuild the table, compile nothing
    python -m benchmarks.aot_plans --smoke                 # one reduced-depth CPU plan (seconds)

TPU and GPU targets need `pip install -e ".[aot]"` (Python >= 3.12).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from mhc import rundir
from study import flags, report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# recipe, mesh (batch divides data*fsdp*expert; experts divide expert), overrides (remat and
# microbatches chosen so that mHC fits an H100 (80 GB) and a v5p chip (95 GiB)), label, families
# (None: all). 27b on v5p: with "auto" (ragged) dispatch libtpu refuses it at compile time
# (CompileTimeHbmOom, 105 GB of temporaries for 95.73 GB: one sequence per device per microbatch
# already), so a second row plans it with the capacity buffers.
PLANS = [
    ("3b", "fsdp=16,expert=4", ("remat=full", "microbatches=5"), "", None),
    ("9b", "fsdp=32,expert=4", ("remat=full", "microbatches=4"), "", None),
    ("27b", "fsdp=32,expert=8", ("remat=full", "microbatches=5"), "", None),
    ("27b", "fsdp=32,expert=8", ("remat=full", "microbatches=5", "moe_dispatch=capacity"),
     "capacity", ("v5p",)),
    # DeepSeek-V3 on the 2048 GPUs it trained on: 256 experts 4 to a device; 16384 sequences
    # (V3's 15360 does not divide over 2048), one per GPU per microbatch
    ("dsv3-671b", "fsdp=32,expert=64", ("remat=full", "microbatches=8", "batch_size=16384"), "",
     ("h100",)),
]
FAMILIES = {  # --target family -> the target name for a mesh of n devices
    "cpu": lambda n: "cpu", "v5p": lambda n: f"v5p-{2 * n}", "h100": lambda n: f"h100x{n}"}
VARIANTS = {  # column -> overrides; "mHC, kernels" only where the Pallas kernels compile
    "residual": ("residual=residual",), "mhc": ("residual=mhc", "kernels=xla"),
    "mhc_pallas": ("residual=mhc", "kernels=pallas")}
REGION = ("<!-- aot-plans:start -->", "<!-- aot-plans:end -->")


def _mesh_size(mesh: str) -> int:
    size = 1
    for part in mesh.split(","):
        size *= int(part.split("=")[1])
    return size


def plan_name(family: str, recipe: str, variant: str, layers: int | None = None,
              label: str = "") -> str:
    return f"{family}-{recipe}{f'-L{layers}' if layers else ''}{f'-{label}' if label else ''}-" \
           f"{variant}"


def run_plan(raw: str, family: str, recipe: str, mesh: str, overrides, variant: str,
             layers: int | None = None, label: str = "") -> dict:
    """The plan's JSON (compiled now unless `raw` has it), with `error` set where the compiler
    refused (the refusal's one line)."""
    path = os.path.join(raw, plan_name(family, recipe, variant, layers, label) + ".json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    target = FAMILIES[family](_mesh_size(mesh))
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    cmd = [sys.executable, "-m", "mhc", "compile", "--recipe", recipe, "--target", target,
           "--mesh", mesh, "--json", path, *(["--layers", str(layers)] if layers else []),
           *overrides, *VARIANTS[variant]]
    print(f"  {' '.join(cmd[2:])}", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600, cwd=REPO)
    if not os.path.exists(path):  # refused: keep the compiler's one line, do not retry
        lines = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()
        rundir.write_json_atomic(path, {"recipe": recipe, "target": target, "mesh": mesh,
                                        "overrides": [*overrides, *VARIANTS[variant]],
                                        "error": lines[-1].removeprefix("mhc: error: ")[:400]})
    with open(path) as f:
        result = json.load(f)
    result.setdefault("provenance", rundir.provenance_entry(" ".join(cmd[2:])))
    rundir.write_json_atomic(path, result)
    return result


def _gib(p: dict, key: str = "peak_bytes") -> str:
    if "error" in p:
        return {"not run": "-"}.get(p["error"], "does not fit" if "does not fit" in p["error"]
                                    else "refused")
    return f"{p[key] / 2**30:.2f} GiB"


def table(rows: list[tuple[str, str, str, tuple, dict]]) -> list[str]:
    """rows: (family, recipe, mesh, overrides, {variant: plan})."""
    out = ["| recipe | target | mesh | settings | residual peak | mHC peak | mHC / residual | "
           "mHC peak, Pallas kernels | fits | compile s (mHC) | compiler |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for family, recipe, mesh, overrides, plans in rows:
        res, mhc, pal = (plans.get(v, {"error": "not run"}) for v in VARIANTS)
        ratio = (f"{mhc['peak_bytes'] / res['peak_bytes']:.3f}"
                 if "error" not in res and "error" not in mhc else "-")
        hbm = mhc.get("hbm_bytes")
        fits = ("no (compile-time OOM)" if "does not fit" in mhc.get("error", "") else
                "-" if "error" in mhc or not hbm else
                f"{'yes' if mhc['peak_bytes'] <= hbm else 'no'} ({hbm / 2**30:.1f} GiB)")
        settings = " ".join(overrides)
        seconds = f"{mhc['compile_seconds']:.0f}" if "compile_seconds" in mhc else "-"
        compiler = mhc.get("compiler") or res.get("compiler") or re.sub(  # or the refusal's
            r"^.*\((libtpu[^)]*\)|XLA[^)]*\))\).*$", r"\1", mhc.get("error", "-"))
        compiler = "-" if compiler == "not run" else compiler
        out.append(f"| {recipe} | {FAMILIES[family](_mesh_size(mesh))} | {mesh} | {settings} | "
                   f"{_gib(res)} | {_gib(mhc)} | {ratio} | {_gib(pal)} | {fits} | {seconds} | "
                   f"{compiler} |")
    return out


def notes(rows) -> list[str]:
    errors = [f"- {recipe} on {p.get('target', family)} ({' '.join(overrides)}), {variant}: "
              f"`{p['error'].removeprefix('mhc: error: ')}`"
              for family, recipe, _, overrides, plans in rows for variant, p in plans.items()
              if "error" in p and p["error"] != "not run"]
    dates = sorted({p["provenance"]["date"][:10] for *_, plans in rows
                    for p in plans.values() if "provenance" in p})
    commits = sorted({p["provenance"]["commit"] + (" (dirty tree)" if p["provenance"]["dirty"]
                                                   else "")
                      for *_, plans in rows for p in plans.values() if "provenance" in p})
    return ([f"Compiled on {', '.join(dates)} at commit {', '.join(commits)} on a CPU-only host "
             f"(`python -m benchmarks.aot_plans`; one JSON per plan in "
             f"`benchmarks/results/aot_plans/`). Peak = arguments + temporaries + unaliased "
             f"outputs per device, from each compiler's memory analysis; the mHC columns carry "
             f"n = 4 streams; batch and sequence as in Table 5 "
             f"unless the settings say otherwise; MoE dispatch \"auto\" is "
             f"ragged on TPU and capacity on GPU and CPU unless a row says otherwise."] +
            (["", "Refused by the compiler:", *errors] if errors else []))


FLAGS = (flags.flag("--target", nargs="+", default=["v5p", "h100", "cpu"], choices=FAMILIES,
                    help="compiler families, in table order"),
         flags.flag("--recipes", nargs="+", default=sorted({p[0] for p in PLANS}),
                    choices=sorted({p[0] for p in PLANS})),
         flags.flag("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS),
         flags.flag("--raw", default=None, help="one JSON per plan (default: "
                    "benchmarks/results/aot_plans, or beside --out with --smoke)"),
         flags.flag("out", default=os.path.join(REPO, "benchmarks/results/aot_plans.md")),
         flags.flag("--readme", default=os.path.join(REPO, "README.md"),
                    help="README whose aot-plans region gets the table ('' = none)"),
         flags.flag("only-finished", help="tabulate, compile nothing"),
         flags.flag("smoke", help="one reduced-depth CPU plan"))


def plan_rows(args, plans, layers) -> list[tuple]:
    """[(family, recipe, mesh, overrides, {variant: plan})]: every plan of `plans` for every
    --target family, compiled unless its JSON is in --raw (--only-finished: only those)."""
    rows = []
    for family in args.target:
        for recipe, mesh, overrides, label, families in plans:
            if families and family not in families:
                continue
            found = {}
            for variant in args.variants:
                name = plan_name(family, recipe, variant, layers, label)
                path = os.path.join(args.raw, name + ".json")
                if args.only_finished and not os.path.exists(path):
                    continue
                print(f"{name}:", flush=True)
                found[variant] = run_plan(args.raw, family, recipe, mesh, overrides, variant,
                                          layers, label)
            rows.append((family, recipe, mesh, overrides, found))
            print(table(rows)[-1], flush=True)
    return rows


def main(argv=None) -> int:
    args = flags.parser(__doc__, *FLAGS).parse_args(argv)
    layers = None
    plans = [p for p in PLANS if p[0] in args.recipes]
    if args.smoke:
        plans, layers = [("3b", "fsdp=4,expert=2", ("remat=full", "batch_size=16",
                                                    "seq_len=256"), "", None)], 2
        args.target, args.variants, args.readme = ["cpu"], ["mhc"], ""  # ~50 s a compile
    args.raw = args.raw or (os.path.join(os.path.dirname(os.path.abspath(args.out)), "raw")
                            if args.smoke else os.path.join(REPO, "benchmarks/results/aot_plans"))
    os.makedirs(args.raw, exist_ok=True)
    rows = plan_rows(args, plans, layers)
    text = "\n".join([*notes(rows), "", *table(rows)]) + "\n"
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    if args.readme:
        report.write_region(args.readme, REGION, "\n" + text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
