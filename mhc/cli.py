"""The `mhc` command (also `python -m mhc`): train · data prepare · plot · inspect · eval · compile
· keys · info.

    mhc train --recipe tiny --residual mhc [key=value ...]
    mhc train --resume --run-dir runs/tiny-mhc-s0           # continue exactly where it stopped
    mhc train --resume --run-dir runs/tiny-mhc-s0 --steps 400  # train a run longer (same LR schedule)
    mhc train --recipe tiny --residual mhc teacher=runs/tiny-residual-s0   # distil (mhc.distill)
    mhc data prepare corpus/*.txt --out data/train.bin [--tokenizer tokenizer.json]
    mhc plot runs/tiny-mhc-s0
    mhc inspect runs/tiny-mhc-s0 [--step N]                  # the learned maps: PNG + text
    mhc eval runs/tiny-mhc-s0 --task data/hellaswag.jsonl [--shots K] [--out results.json]
    mhc eval runs/tiny-mhc-s0 --harness lm-eval --tasks T1,T2 --include-path DIR   # .[eval]
    mhc compile --recipe 27b --mesh fsdp=64,expert=8 --hbm 80GiB
    mhc keys [TEXT]                                           # the config keys, types, values
    mhc info
Bad input exits with status 2 and one line `mhc: error: ...` naming the bad value, before anything
is written. A run that aborts on non-finite steps exits 3; SIGTERM/SIGINT save a checkpoint and
exit 128 + the signal number (143 / 130).
"""
from __future__ import annotations

import argparse
import os
import sys

from mhc.config import ConfigError

EXIT_BAD_INPUT, EXIT_DIVERGED = 2, 3


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not the usage block
        self.exit(EXIT_BAD_INPUT, f"mhc: error: {message}\n")


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> int:
    print(f"mhc: error: {message}", file=sys.stderr)
    return code


def _resolve_config(args):
    """(config, run_dir) from the recipe + overrides, or from RUN_DIR/config.json on --resume."""
    from mhc import recipes, rundir
    from mhc.config import apply_overrides, default_run_dir, extend

    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.insert(0, f"steps={args.steps}")
    if args.residual:
        overrides.insert(0, f"residual={args.residual}")
    if args.mesh:
        overrides.insert(0, f"mesh={args.mesh}")
    if not args.resume:
        recipe = recipes.get(args.recipe)
        cfg = apply_overrides(recipe, overrides)
        if cfg.train.teacher:  # saved absolute, so --resume finds it from any directory
            cfg = apply_overrides(cfg, [f"teacher={os.path.abspath(cfg.train.teacher)}"])
        return cfg, args.run_dir or default_run_dir(cfg, args.recipe, recipe)
    if not args.run_dir:
        raise ConfigError("--resume needs --run-dir RUN_DIR (the run to continue)")
    saved = rundir.load_run_config(args.run_dir)
    cfg = apply_overrides(saved, overrides)
    if cfg.train.steps != saved.train.steps:  # --steps N: train the run longer
        cfg = apply_overrides(extend(saved, cfg.train.steps), overrides)
    return cfg, args.run_dir


def _header(args, cfg, run_dir) -> str:
    """What defines the run, on one line: recipe, connection, the overrides, size, directory."""
    from mhc import recipes
    from mhc.config import changed

    m, t = cfg.model, cfg.train
    if args.resume:
        source = "resume"
        if t.schedule_steps and t.schedule_steps < t.steps:
            source += (f" to step {t.steps} (LR schedule of {t.schedule_steps} steps, then its "
                       f"final LR)")
    else:
        source = f"recipe={args.recipe}"
    connection = f"residual={m.residual}"
    if m.residual not in ("residual", "hc"):  # HC's maps are not projected onto a manifold
        connection += f" manifold={m.manifold}"
    base = recipes.get(args.recipe) if not args.resume else None
    extra = [c for c in changed(cfg, base) if not c.startswith(("residual=", "manifold="))] \
        if base else []
    _, total = recipes.count_params(cfg)
    return (f"mhc train: {source} {connection} streams={m.streams}"
            + (f" overrides: {' '.join(extra)}" if extra else "")
            + f" params={total:,} run_dir={run_dir}")


def _train(args) -> int:
    import signal

    from mhc import sharding, train

    cfg, run_dir = _resolve_config(args)
    if args.coordinator:
        sharding.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    if cfg.train.mesh:  # fail before anything is written
        sharding.check_batch(cfg.train.batch_size, sharding.make_mesh(cfg.train.mesh))
    print(_header(args, cfg, run_dir), flush=True)
    try:
        result = train.run(cfg, run_dir, resume=args.resume, overwrite=args.overwrite)
    except train.TrainingInterrupted as e:
        print(f"mhc: {e}", file=sys.stderr, flush=True)
        return 128 + e.signum
    except train.TrainingDiverged as e:
        return _fail(str(e), EXIT_DIVERGED)
    except KeyboardInterrupt:  # a second Ctrl-C while saving
        return 128 + signal.SIGINT
    print(f"done: loss {result.first_loss:.3f} -> {result.final_loss:.3f}, eval "
          f"{result.final_eval_loss:.3f}; checkpoint {result.checkpoint}", flush=True)
    return 0


def _data_prepare(args) -> int:
    from mhc import data

    meta = data.prepare(args.inputs, args.out, tokenizer=args.tokenizer, dtype=args.dtype,
                        eos=args.eos, overwrite=args.overwrite, progress=not args.quiet)
    print(f"wrote {args.out}: {meta['n_tokens']:,} tokens ({meta['dtype']}, tokenizer "
          f"{meta['tokenizer']}, vocab {meta['vocab_size']}, {meta['documents']} documents); "
          f"train with corpus={args.out}" + (f" vocab_size={meta['vocab_size']}"
                                             if meta["vocab_size"] != 256 else ""), flush=True)
    return 0


def _plot(args) -> int:
    from mhc import plot

    print(f"wrote {plot.plot_run(args.run_dir, args.out)}", flush=True)
    return 0


def _inspect(args) -> int:
    from mhc import inspect_run

    result = inspect_run.inspect(args.run_dir, args.step, args.out, batch=args.batch,
                                 seq_len=args.seq_len)
    print(result.text)
    print(f"wrote {result.png} and {os.path.splitext(result.png)[0]}.txt", flush=True)
    return 0


def _eval(args) -> int:
    from mhc import evaluate, rundir

    if args.harness == "lm-eval":
        return _eval_lm_eval(args)
    for flag, value in (("--tasks", args.tasks), ("--include-path", args.include_path)):
        if value is not None:
            return _fail(f"{flag} is for --harness lm-eval; mhc's own evaluator takes --task PATH")
    if not args.task:
        return _fail("the following arguments are required: --task (or --harness lm-eval "
                     "--tasks NAMES)")
    print(f"mhc eval: {args.run_dir} on {len(args.task)} task(s)", flush=True)
    results = evaluate.run(args.run_dir, args.task, shots=args.shots, limit=args.limit,
                           step=args.step, seed=args.seed, max_new_tokens=64
                           if args.max_new_tokens is None else args.max_new_tokens,
                           batch_size=args.batch_size, max_len=args.max_len, verbose=True)
    print(f"checkpoint step {results['step']} ({results['residual']})")
    print(evaluate.format_table(results), flush=True)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        rundir.write_json_atomic(args.out, results)
        print(f"wrote {args.out}", flush=True)
    return 0


def _eval_lm_eval(args) -> int:
    """`mhc eval --harness lm-eval`: the adapter of mhc/harness.py under lm-eval's evaluator."""
    from mhc import rundir

    for flag, value in (("--task", args.task), ("--max-new-tokens", args.max_new_tokens)):
        if value is not None:
            return _fail(f"{flag} is for mhc's own evaluator; with --harness lm-eval name the "
                         f"tasks with --tasks (generation lengths come from the task YAML)")
    if not args.tasks:
        return _fail("--harness lm-eval needs --tasks NAME[,NAME...]")
    try:
        from mhc import harness
    except ImportError as e:
        return _fail(str(e))
    names = args.tasks.split(",")
    print(f"mhc eval: {args.run_dir} on {len(names)} lm-eval task(s)", flush=True)
    results = harness.run(args.run_dir, names, args.include_path, shots=args.shots,
                          limit=args.limit, step=args.step, batch_size=args.batch_size,
                          max_len=args.max_len, seed=args.seed)
    print(f"checkpoint step {results['step']} ({results['residual']})")
    print(harness.format_table(results), flush=True)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        rundir.write_json_atomic(args.out, harness.json_safe(results))
        print(f"wrote {args.out}", flush=True)
    return 0


def _compile(args) -> int:
    import math

    from mhc import aot, recipes, sharding, targets
    from mhc.config import apply_overrides

    if args.list_targets:
        print(targets.list_targets())
        return 0
    target = targets.parse(args.target)
    sizes = sharding.parse_mesh(args.mesh)
    mesh = args.mesh if args.mesh or target.platform == "cpu" else f"fsdp={target.n_devices}"
    hbm = aot.parse_bytes(args.hbm) if args.hbm else None
    overrides = [*([f"residual={args.residual}"] if args.residual else []), *args.overrides]
    cfg = apply_overrides(recipes.get(args.recipe), overrides)
    if args.layers:
        cfg = aot.reduced_depth(cfg, args.layers)
    if target.platform == "cpu":
        _use_fake_cpu_devices(math.prod(sizes.values()))
    print(f"mhc compile: recipe {args.recipe} for {target.name} ({target.compiler}); "
          f"compiling...", flush=True)
    plan = aot.plan(cfg, mesh, target=target.name)
    print(aot.format_plan(args.recipe, cfg, plan, hbm), flush=True)
    if args.json:
        from mhc import rundir
        rundir.write_json_atomic(args.json, {"recipe": args.recipe, "overrides": overrides,
                                             **plan, "provenance": rundir.provenance_entry()})
    limit = hbm or target.hbm_bytes
    if limit and plan["peak_bytes"] > limit:
        return _fail(f"plan does not fit: compiled peak {plan['peak_bytes'] / 2**30:.2f} GiB per "
                     f"device exceeds {args.hbm or target.name} ({limit / 2**30:.2f} GiB)")
    return 0


def _use_fake_cpu_devices(n: int):
    """Compile for `n` simulated devices: must run before JAX creates its backend."""
    import jax
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        if len(jax.devices()) < n:
            raise ValueError(f"the mesh needs {n} devices; JAX is already running on "
                             f"{len(jax.devices())}")
        return
    flags = os.environ.get("XLA_FLAGS", "")
    flags = " ".join(f for f in flags.split() if "force_host_platform_device_count" not in f)
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    jax.config.update("jax_platforms", "cpu")


def _keys(args) -> int:
    from mhc import recipes
    from mhc.config import keys

    rows = [r for r in keys(recipes.get(args.recipe))
            if not args.match or any(m in r[1] for m in args.match)]
    if not rows:
        return _fail(f"no config key contains {' or '.join(map(repr, args.match))}")
    width = max(len(r[1]) for r in rows)
    print(f"config keys (key=value; model.KEY / train.KEY also work), values of recipe "
          f"{args.recipe}:")
    for section, name, kind, value in rows:
        print(f"  {section:5s} {name:<{width}}  {kind:<16s} {value!r}")
    return 0


def _info(_args) -> int:
    import flax
    import jax
    import optax

    from mhc import __version__, manifolds, recipes

    print(f"mhc {__version__} | jax {jax.__version__} | flax {flax.__version__} | "
          f"optax {optax.__version__}")
    print(f"devices: {', '.join(str(d) for d in jax.devices())}")
    print(f"recipes: {', '.join(recipes.names())}")
    print(f"manifolds: {', '.join(manifolds.names())}")
    for name in recipes.names():
        cfg = recipes.get(name)
        _, total = recipes.count_params(cfg)
        m = cfg.model
        print(f"  {name}: {m.n_layers} layers, d_model {m.d_model}, {total:,} params")
    return 0


def _keys_epilog() -> str:
    import dataclasses

    from mhc.config import ModelConfig, TrainConfig

    def names(cls):
        return ", ".join(f.name for f in dataclasses.fields(cls))
    return (f"model keys: {names(ModelConfig)}. train keys: {names(TrainConfig)}. "
            f"`mhc keys [TEXT]` shows their types and values. --resume --steps N trains a run "
            f"longer: its LR schedule keeps its length, so the LR stays at its final value.")


def _residual_flag(p) -> None:
    from mhc.connections import KINDS
    p.add_argument("--residual", default=None,
                   help=f"{' | '.join(KINDS)} (shorthand for residual=...)")


def _parser() -> _Parser:
    parser = _Parser(prog="mhc", description="Manifold-Constrained Hyper-Connections in JAX")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("train", help="train a recipe (bundled corpus, text files or token files)")
    p.add_argument("--recipe", default="tiny")
    _residual_flag(p)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--run-dir", default=None, help="default: <out_dir>/<recipe>-<residual>-s<seed>")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --run-dir from its latest checkpoint (its saved "
                        "config; only logging/checkpoint/fault settings and the mesh may be "
                        "overridden)")
    p.add_argument("--mesh", default=None, help="device mesh, e.g. fsdp=4,expert=2 "
                                                "(shorthand for mesh=...)")
    p.add_argument("--coordinator", default=None, help="host:port of process 0 for a "
                                                       "multi-process (multi-host) run")
    p.add_argument("--num-processes", type=int, default=1)
    p.add_argument("--process-id", type=int, default=0)
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. lr=1e-3 n_layers=8 corpus=data/train.bin")
    p.set_defaults(func=_train)
    p.epilog = _keys_epilog()

    p = sub.add_parser("keys", help="list the config keys (key=value overrides) with their "
                                    "types and a recipe's values")
    p.add_argument("match", nargs="*", help="only keys containing one of these strings")
    p.add_argument("--recipe", default="tiny")
    p.set_defaults(func=_keys)

    p = sub.add_parser("data", help="data tools")
    data_sub = p.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    p = data_sub.add_parser("prepare", help="tokenize text into a .bin token file (+ .json)")
    p.add_argument("inputs", nargs="+", help=".txt files, directories of .txt files, or kjv")
    p.add_argument("--out", required=True, help="output token file, e.g. data/train.bin")
    p.add_argument("--tokenizer", default=None,
                   help="Hugging Face tokenizer.json (needs `pip install tokenizers`); "
                        "default: byte-level")
    p.add_argument("--dtype", default="auto", help="auto | uint16 | uint32")
    p.add_argument("--eos", default=None,
                   help="separator token between documents (default: the tokenizer's EOS)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_data_prepare)

    p = sub.add_parser("plot", help="draw a run's curves to PNG")
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="default: RUN_DIR/curves.png")
    p.set_defaults(func=_plot)

    p = sub.add_parser("inspect", help="a run's learned maps at a checkpoint: H_res and composite "
                                       "heatmaps, H_pre/H_post, gain and diversity over depth")
    p.add_argument("run_dir")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--out", default=None, help="PNG path (default: RUN_DIR/inspect-<step>.png)")
    p.add_argument("--batch", type=int, default=4, help="held-out windows to average over")
    p.add_argument("--seq-len", type=int, default=None,
                   help="tokens per window (default: the run's seq_len)")
    p.set_defaults(func=_inspect)

    p = sub.add_parser("eval", help="score a checkpoint on local task files (few-shot "
                                    "log-likelihood ranking / exact match, paper Table 4)")
    p.add_argument("run_dir")
    p.add_argument("--task", action="append", default=None, metavar="[NAME=]PATH",
                   help="JSONL task file (repeatable); format in mhc/tasks.py")
    p.add_argument("--harness", choices=("mhc", "lm-eval"), default="mhc",
                   help="mhc (default): our evaluator on --task files; lm-eval: "
                        "lm-evaluation-harness on --tasks (pip install -e '.[eval]', offline)")
    p.add_argument("--tasks", default=None, metavar="T1,T2",
                   help="lm-eval task names (with --harness lm-eval)")
    p.add_argument("--include-path", default=None, metavar="DIR",
                   help="directory of lm-eval task YAMLs (with --harness lm-eval)")
    p.add_argument("--shots", type=int, default=None,
                   help="few-shot examples (default: Table 4's for a known task name, else 0)")
    p.add_argument("--limit", type=int, default=None, help="score the first N examples only")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--out", default=None, help="write the results (and predictions) as JSON")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="cap on generated tokens (default 64)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-len", type=int, default=None,
                   help="context in tokens (default: the model's max_seq_len)")
    p.add_argument("--seed", type=int, default=1234, help="seed of the few-shot draw")
    p.set_defaults(func=_eval)

    p = sub.add_parser("compile", help="AOT-compile the training step for a simulated mesh and "
                                       "print the per-device memory plan")
    p.add_argument("--recipe", default="27b")
    _residual_flag(p)
    p.add_argument("--target", default="cpu",
                   help="whose compiler: cpu (fake CPU devices, default), v5e-N / v6e-N (N "
                        "chips), v5p-N (N TensorCores, 2 per chip), h100xN / h200xN (N GPUs, 8 "
                        "per host); TPU and GPU need pip install -e '.[aot]'")
    p.add_argument("--list-targets", action="store_true", help="list the targets and exit")
    p.add_argument("--mesh", default=None, help="e.g. fsdp=64,expert=8 (axes: data, fsdp, "
                                                "expert, tensor); default: one CPU device, or "
                                                "all of the target's devices on fsdp")
    p.add_argument("--hbm", default=None, help="per-device memory, e.g. 80GiB (default: the "
                                               "target's): exit 2 if the plan does not fit")
    p.add_argument("--layers", type=int, default=None, help="reduce depth (quick plans)")
    p.add_argument("--json", default=None, help="also write the plan's numbers to this file")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=_compile)
    p = sub.add_parser("info", help="versions, devices, recipes and manifolds")
    p.set_defaults(func=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and (not hasattr(args, "overrides") or any(e.startswith("-") for e in extra)):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as e:  # usage errors (one line, status 2) and --help (status 0)
        return e.code
    if extra:  # key=value overrides given after options (argparse stops at the first option)
        args.overrides = [*args.overrides, *extra]
    try:
        return args.func(args)
    except (ConfigError, ValueError, FileNotFoundError) as e:  # incl. ShardingError
        return _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)


if __name__ == "__main__":
    sys.exit(main())
