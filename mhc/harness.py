"""lm-evaluation-harness adapter: an `LM` over the jitted scorer of `mhc eval` (mhc/scoring.py).

    pip install -e '.[eval]'                  # lm-eval 0.4.x; its core needs no torch
    mhc eval runs/tiny-mhc-s0 --harness lm-eval --tasks mhc_piqa_mini \\
        --include-path tests/fixtures/lm_eval --limit 20
    results = mhc.harness.run("runs/tiny-mhc-s0", ["mhc_piqa_mini"], "tests/fixtures/lm_eval")

Our models are byte-level (vocabulary 256, UTF-8 bytes: mhc/data.py), so the adapter encodes the
strings lm-eval passes as UTF-8 and needs no tokenizer. Every request type maps onto the scorer:
  loglikelihood          (context, continuation) -> (summed log-probability, is_greedy); an empty
                         context conditions on a line break, as `mhc eval` does (no BOS byte)
  loglikelihood_rolling  the text in lm-eval's disjoint rolling windows of the model's context,
                         the first conditioned on a line break; each byte is scored once
  generate_until         greedy decoding until a stop string of `until` or `max_gen_toks` bytes
                         (at most half the context, so the prompt keeps the other half)
Sampling (do_sample, temperature > 0) is refused: the scorer decodes greedily only.

Runs offline: HF_DATASETS_OFFLINE and HF_HUB_OFFLINE are set unless the caller set them, and the
tasks are local YAMLs (`dataset_path: json`, `dataset_kwargs.data_files` pointing at JSONL; a
relative path is read from the current directory, as the datasets library does).

Numbers: on the same data, a 0-shot multiple-choice task scores the same (context, continuation)
bytes as `mhc eval` with the same jitted program, so the per-choice log-likelihoods, acc and
acc_norm agree (tests/test_harness.py). With shots, both are valid but draw different examples
(lm-eval's sampler vs ours); generation tasks differ in the separator `mhc eval` puts before the
answer.
"""
from __future__ import annotations

import collections
import json
import os

import numpy as np

try:
    from lm_eval.api.model import LM
except ImportError as e:  # the optional extra: say how to get it, in one line
    raise ImportError("--harness lm-eval needs lm-evaluation-harness: pip install -e '.[eval]'"
                      ) from e

from mhc import data
from mhc.evaluate import align, open_run
from mhc.scoring import Scorer
from mhc.tasks import TaskError

NEWLINE = int(data.encode("\n")[0])  # what an empty context conditions on (see module docs)


class MhcLM(LM):
    """lm-eval's `LM` over a byte-level mhc model; batches of `batch_size` rows, inputs cut from
    the left to `max_len` (default: the model's max_seq_len)."""

    def __init__(self, model, *, batch_size: int = 16, max_len: int | None = None,
                 max_gen_toks: int = 256):
        super().__init__()
        self.scorer = Scorer(model, batch_size=batch_size, max_len=max_len)
        self.max_gen_toks = max_gen_toks

    @classmethod
    def from_run(cls, run_dir: str, *, step: int | None = None, batch_size: int = 16,
                 max_len: int | None = None) -> "MhcLM":
        """The adapter over a run's checkpoint (the latest, or `step`), checked as `mhc eval`
        checks it; `.step` is the restored step, `.residual` the run's residual kind."""
        model, cfg, restored = open_run(run_dir, step, max_len)
        lm = cls(model, batch_size=batch_size, max_len=max_len)
        lm.step, lm.residual = restored, cfg.model.residual
        return lm

    # lm-eval calls these with lists of Instance; `.args` holds the request's arguments
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [(data.encode(ctx), data.encode(cont)) for ctx, cont in (r.args for r in requests)]
        if not pairs:
            return []
        ll, greedy = self.scorer.loglikelihood(pairs, with_greedy=True)
        out = [(float(v), bool(g)) for v, g in zip(ll, greedy)]
        for r, res in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood", r.args, res)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        pairs, owner = [], []
        for i, r in enumerate(requests):
            tokens = data.encode(r.args[0]).tolist()
            for window in get_rolling_token_windows(tokens, prefix_token=NEWLINE,
                                                    max_seq_len=self.scorer.max_len,
                                                    context_len=1):
                ctx, cont = make_disjoint_window(window)
                pairs.append((np.asarray(ctx, np.int32), np.asarray(cont, np.int32)))
                owner.append(i)
        totals = np.zeros(len(requests))
        if pairs:  # one batched pass over every window of every document
            np.add.at(totals, owner, self.scorer.loglikelihood(pairs))
        out = [float(v) for v in totals]
        for r, res in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood_rolling", r.args, res)
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        groups = collections.defaultdict(list)  # one batched greedy run per (stops, length)
        for i, r in enumerate(requests):
            _, kwargs = r.args
            groups[self._generation_settings(dict(kwargs or {}))].append(i)
        out = [""] * len(requests)
        for (stops, max_new), rows in groups.items():
            texts = self.scorer.greedy([data.encode(requests[i].args[0]) for i in rows],
                                       max_new, stops)
            for i, text in zip(rows, texts):
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out

    def _generation_settings(self, kwargs: dict) -> tuple[tuple[str, ...], int]:
        until = kwargs.pop("until", None) or ()
        stops = (until,) if isinstance(until, str) else tuple(until)
        if kwargs.get("do_sample") or float(kwargs.get("temperature") or 0.0) > 0.0:
            raise TaskError(f"generation with do_sample={kwargs.get('do_sample')!r}, "
                            f"temperature={kwargs.get('temperature')!r}: the mhc adapter decodes "
                            f"greedily only (set do_sample: false in the task's generation_kwargs)")
        requested = kwargs.get("max_gen_toks", self.max_gen_toks)
        if not isinstance(requested, int) or requested < 1:
            raise TaskError(f"max_gen_toks {requested!r}; must be an integer >= 1")
        return stops, min(requested, self.scorer.max_len // 2)


def _offline() -> None:
    """No network at evaluation: local task files only (a caller's own setting wins)."""
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        os.environ.setdefault(var, "1")


def run(run_dir: str, task_names, include_path: str | None = None, *, shots: int | None = None,
        limit: int | None = None, step: int | None = None, batch_size: int = 16,
        max_len: int | None = None, seed: int = 1234) -> dict:
    """lm-eval's `simple_evaluate` of the run's checkpoint on `task_names`: the task YAMLs under
    `include_path`, or without it lm-eval's own tasks (their data sets must already be in the
    Hugging Face cache: the run is offline). Every input is checked before the model is loaded.
    Returns lm-eval's results dict with "run_dir", "step" and "residual" added."""
    for name, value, low in (("--limit", limit, 1), ("--batch-size", batch_size, 1),
                             ("--max-len", max_len, 2), ("--shots", shots, 0)):
        if value is not None and (not isinstance(value, int) or value < low):
            raise TaskError(f"{name} {value!r}; must be an integer >= {low}")
    task_names = [t.strip() for t in task_names if t.strip()]
    if not task_names:
        raise TaskError("no task given; pass --tasks NAME[,NAME...] (lm-eval task names)")
    if include_path is not None and not os.path.isdir(include_path):
        raise TaskError(f"--include-path {include_path!r} is not a directory")
    if not os.path.isdir(run_dir):
        raise TaskError(f"run directory {run_dir!r} does not exist")
    _offline()
    from lm_eval.evaluator import simple_evaluate
    from lm_eval.tasks import TaskManager

    # with a local directory, index it alone: lm-eval's ~15k bundled task YAMLs take ~40 s to
    # index, and their data sets need a download that offline runs cannot make
    manager = TaskManager(include_path=include_path, include_defaults=include_path is None)
    for name in task_names:
        if not manager.match_tasks([name]):
            where = f" under --include-path {include_path!r}" if include_path else ""
            raise TaskError(f"--tasks: no lm-eval task named {name!r}{where} (a task YAML's "
                            f"'task:' name; see lm-eval's docs on new tasks)")
    lm = MhcLM.from_run(run_dir, step=step, batch_size=batch_size, max_len=max_len)
    results = simple_evaluate(model=lm, tasks=task_names, num_fewshot=shots, limit=limit,
                              task_manager=manager, log_samples=True, bootstrap_iters=0,
                              random_seed=seed, numpy_random_seed=seed, fewshot_random_seed=seed)
    results.update(run_dir=run_dir, step=lm.step, residual=lm.residual)
    return results


def json_safe(results: dict) -> dict:
    """lm-eval's results as plain JSON (its task configs hold functions and numpy scalars)."""
    return json.loads(json.dumps(results, default=str))


def format_table(results: dict) -> str:
    """One row per (task, metric): task, metric, value, n, shots (lm-eval's own metrics)."""
    rows = [("task", "metric", "value", "n", "shots")]
    for name, metrics in results["results"].items():
        n = results.get("n-samples", {}).get(name, {}).get("effective", "")
        shots = results.get("n-shot", {}).get(name, "")
        for key, value in metrics.items():
            metric, _, filt = key.partition(",")
            if metric == "alias" or metric.endswith("_stderr") or not isinstance(value, float):
                continue
            label = metric if filt in ("none", "") else f"{metric} ({filt})"
            rows.append((name, label, f"{value:.4f}", str(n), str(shots)))
    return align(rows)
