"""`mhc eval`: few-shot evaluation of a checkpoint on local task files (paper Table 4).

    mhc eval runs/small-mhc --task data/hellaswag.jsonl --task gsm8k=data/test.jsonl --out r.json
    results = mhc.evaluate.run("runs/small-mhc", ["data/piqa.jsonl"], shots=None, limit=100)

Every input is checked before the model is loaded: the task files (format, prompts and answer
rules: mhc/tasks.py), the run directory, that the run is byte-level, and its checkpoint. The
tasks are scored with the jitted batched scorer of mhc/scoring.py; `format_table` prints the
results.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

from mhc import checkpoint, data, rundir
from mhc.scoring import Scorer
from mhc.tasks import (STOPS, Task, TaskError, build_prompt, exact_match, f1_score, join_target,
                       load_task)


# ------------------------------------------------------------------------------- checkpoints
def check_byte_level(cfg) -> None:
    """Raise TaskError unless the run's data was byte-level (text is encoded as UTF-8 bytes)."""
    corpus = cfg.train.corpus
    if not data.is_token_file(corpus):
        return  # kjv, shakespeare, .txt files and directories: byte-level
    side = data.sidecar_path(corpus)
    try:
        with open(side) as f:
            tokenizer = json.load(f).get("tokenizer")
    except (OSError, ValueError):
        raise TaskError(f"cannot tell how the run's token file {corpus!r} was tokenized: its "
                        f"sidecar {str(side)!r} is missing or unreadable (mhc eval supports "
                        f"byte-level runs only)") from None
    if tokenizer != "bytes":
        raise TaskError(f"the run was trained on {corpus!r}, tokenized with {tokenizer!r}; "
                        f"mhc eval supports byte-level runs only (data prepare without "
                        f"--tokenizer)")


def open_run(run_dir: str, step: int | None = None, max_len: int | None = None):
    """(model, config, step) of a byte-level run's checkpoint (the latest, or `step`); raises
    TaskError naming the bad run directory, step or `max_len`. Also the lm-eval adapter's."""
    if not os.path.isdir(run_dir):
        raise TaskError(f"run directory {run_dir!r} does not exist")
    if not os.path.isfile(os.path.join(run_dir, "config.json")):
        raise TaskError(f"{run_dir!r} has no config.json (not an mhc run directory)")
    check_byte_level(rundir.load_run_config(run_dir))
    ckpts = checkpoint.directory(run_dir)  # complete steps only: orbax renames temp dirs last
    steps = sorted(int(d) for d in os.listdir(ckpts) if d.isdigit()) if os.path.isdir(ckpts) else []
    if not steps:
        raise TaskError(f"run {run_dir!r} has no checkpoint (train with checkpoint=true)")
    if step is not None and step not in steps:
        raise TaskError(f"--step {step}: no such checkpoint in {run_dir!r}; available: "
                        f"{', '.join(map(str, steps))}")
    model, cfg, restored_step = checkpoint.load_model(run_dir, step)
    if max_len is not None and max_len > cfg.model.max_seq_len:
        raise TaskError(f"--max-len {max_len} exceeds the model's max_seq_len="
                        f"{cfg.model.max_seq_len}")
    return model, cfg, restored_step


# ------------------------------------------------------------------------------- evaluation
def evaluate_task(scorer: Scorer, task: Task, *, limit: int | None = None, seed: int = 1234,
                  max_new_tokens: int = 64) -> dict:
    """Metrics and per-example predictions of one task."""
    n = len(task.examples) if limit is None else min(limit, len(task.examples))
    prompts = [build_prompt(task, i, seed) for i in range(n)]
    result = {"path": task.path, "fewshot_path": task.fewshot_path, "kind": task.kind,
              "benchmark": task.benchmark, "shots": task.shots, "n": n, "headline": task.metric}
    if task.kind == "choice":
        requests, owner = [], []
        for i, prompt in enumerate(prompts):
            ex = task.examples[i]
            for choice in ex.choices:
                cont = join_target(prompt, choice) + choice
                requests.append((data.encode(prompt), data.encode(cont)))
                # acc_norm divides by the choice's bytes without the separator, as lm-eval's
                # acc_bytes (= its acc_norm, per character, on ASCII choices)
                owner.append((i, len(data.encode(choice))))
        ll = scorer.loglikelihood(requests)
        preds, at = [], 0
        for i in range(n):
            k = len(task.examples[i].choices)
            scores, lengths = ll[at:at + k], np.array([b for _, b in owner[at:at + k]])
            at += k
            preds.append({"line": task.examples[i].line, "loglik": scores.round(4).tolist(),
                          "pred": int(np.argmax(scores)),
                          "pred_norm": int(np.argmax(scores / lengths)),
                          "answer": task.examples[i].answer})
        result["metrics"] = {
            "acc": float(np.mean([p["pred"] == p["answer"] for p in preds])),
            "acc_norm": float(np.mean([p["pred_norm"] == p["answer"] for p in preds]))}
    else:
        stops = STOPS[task.rule]
        # the model continues after the separator a solved example has before its answer
        outs = scorer.greedy([data.encode(p + join_target(p, "x")) for p in prompts],
                             max_new_tokens, stops)
        preds = []
        for i, text in enumerate(outs):
            ex = task.examples[i]
            preds.append({"line": ex.line, "generation": text,
                          "em": exact_match(text, ex.answer, task.rule),
                          "f1": f1_score(text, ex.answer)})
        result["metrics"] = {"em": float(np.mean([p["em"] for p in preds]))}
        if task.rule == "text":
            result["metrics"]["f1"] = float(np.mean([p["f1"] for p in preds]))
    result["value"] = result["metrics"][task.metric]
    result["predictions"] = preds
    return result


def run(run_dir: str, task_specs, *, shots: int | None = None, limit: int | None = None,
        step: int | None = None, seed: int = 1234, max_new_tokens: int = 64,
        batch_size: int = 16, max_len: int | None = None, verbose: bool = False) -> dict:
    """Evaluate the checkpoint of `run_dir` on each `[NAME=]PATH` task; every input is checked
    (task files first) before the model is loaded."""
    for name, value, low in (("--limit", limit, 1), ("--batch-size", batch_size, 1),
                             ("--max-new-tokens", max_new_tokens, 1), ("--max-len", max_len, 2)):
        if value is not None and (not isinstance(value, int) or value < low):
            raise TaskError(f"{name} {value!r}; must be an integer >= {low}")
    if not task_specs:
        raise TaskError("no task given; pass --task PATH.jsonl (one or more)")
    if not os.path.isdir(run_dir):
        raise TaskError(f"run directory {run_dir!r} does not exist")
    tasks = [load_task(spec, shots) for spec in task_specs]
    names = [t.name for t in tasks]
    if len(set(names)) < len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise TaskError(f"two tasks are named {dup!r}; name them with NAME=PATH")
    model, cfg, restored_step = open_run(run_dir, step, max_len)
    scorer = Scorer(model, batch_size=batch_size, max_len=max_len)
    results = {}
    for task in tasks:
        if verbose:
            print(f"  {task.name}: {min(limit or math.inf, len(task.examples))} examples, "
                  f"{task.shots}-shot ({task.kind})", flush=True)
        results[task.name] = evaluate_task(scorer, task, limit=limit, seed=seed,
                                           max_new_tokens=max_new_tokens)
    return {"run_dir": run_dir, "step": restored_step, "residual": cfg.model.residual,
            "settings": {"seed": seed, "max_new_tokens": max_new_tokens, "limit": limit,
                         "max_len": scorer.max_len, "batch_size": batch_size},
            "tasks": results}


def format_table(results: dict) -> str:
    """One row per (task, metric): task, metric, value, n, shots; the headline metric first."""
    rows = [("task", "metric", "value", "n", "shots")]
    for name, r in results["tasks"].items():
        for metric in sorted(r["metrics"], key=lambda m: m != r["headline"]):
            rows.append((name, metric, f"{r['metrics'][metric]:.4f}", str(r["n"]),
                         str(r["shots"])))
    return align(rows)


def align(rows) -> str:
    """Rows of strings as columns: the first two left-aligned, the numbers right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths))) for row in rows)
