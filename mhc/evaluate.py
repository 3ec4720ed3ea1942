"""Few-shot evaluation of a checkpoint on local task files (the formats of paper Table 4).

    mhc eval runs/small-mhc --task data/hellaswag.jsonl --task gsm8k=data/test.jsonl --out r.json
    results = mhc.evaluate.run("runs/small-mhc", ["data/piqa.jsonl"], shots=None, limit=100)

Users bring the data (nothing is downloaded). A task file is JSONL, one example per line:
  multiple choice  {"context": str and/or "question": str, "choices": [str, ...], "answer": int}
                   scored by log-likelihood ranking of each choice as a continuation of the prompt:
                   `acc` (highest total log-likelihood) and `acc_norm` (log-likelihood per UTF-8
                   byte of the choice, the lm-evaluation-harness convention for HellaSwag/PIQA)
  generation       {"context": str and/or "question": str, "answer": str or [aliases]}
                   scored by greedy decoding until a stop string or `max_new_tokens`, then exact
                   match (`em`, any alias) after the task's answer rule, and token F1 (`f1`).
An optional "id" is ignored; any other field is an error. One task type per file.

Prompt of one example: `{context}` alone, `Question: {question}\\nAnswer:` alone, or
`{context}\\nQuestion: {question}\\nAnswer:`; its target is a space then the choice / first alias
(no space when the prompt is empty or ends in whitespace, or the target starts with whitespace).
k-shot: k solved examples joined by blank lines, then the prompt. The k examples are drawn with a
seeded RNG per scored example (same result whatever --limit) from `<stem>.dev.jsonl` next to
`<stem>.jsonl` when it exists, else from the same file without the scored example.

Task names: a file's stem or NAME in `NAME=PATH`. The first alphanumeric word of the name picks
the Table 4 defaults (arXiv 2512.24880, Table 4) - shots, headline metric and answer rule:
  bbh 3 em exact · drop 3 f1 text · gsm8k 8 em number · hellaswag 10 acc · math 4 em math ·
  mmlu 5 acc · piqa 0 acc · triviaqa 5 em text;  anything else: 0 shots, acc / em with text.
Answer rules (applied to the generation and to every alias):
  text    SQuAD/TriviaQA normalisation: lower case, punctuation and the articles a/an/the
          removed, numbers written canonically (1,000.0 -> 1000), whitespace collapsed
  exact   BBH: the text after the last "answer is" if any, else the first non-empty line;
          stripped, trailing "." removed, case-folded
  number  GSM8K: the last number after the last "####" (or "answer is"), else the last number
          in the text; commas and "$" removed, compared as decimals
  math    MATH: the last \\boxed{...}, else the text after the last "answer is", else the text;
          spaces, "$", \\left, \\right, \\!, trailing "." removed, \\dfrac/\\tfrac -> \\frac
Generation stops at a newline, ". " or ", " (text: short answers, as lm-evaluation-harness
stops TriviaQA) or at a blank line or "Question:" (exact, number, math: chain-of-thought answers
span lines); the output is cut before the stop string.

Efficiency: choice continuations are scored in batches padded to power-of-two lengths with one
jitted forward per batch (a few compiled shapes per task); greedy decoding recomputes the full
forward per token (there is no KV cache) in batches, also at bucketed lengths. Inputs are cut from
the left to the model's `max_seq_len`. Only byte-level runs (the bundled corpora, text files or
token files prepared without --tokenizer) are supported.
"""
from __future__ import annotations

import collections
import dataclasses
import decimal
import functools
import json
import math
import os
import re
import string

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging as absl_logging
from flax import nnx

from mhc import data

# name -> (shots, headline metric, answer rule): the paper's Table 4 (27B, Baseline/HC/mHC)
TABLE4 = {"bbh": (3, "em", "exact"), "drop": (3, "f1", "text"), "gsm8k": (8, "em", "number"),
          "hellaswag": (10, "acc", None), "math": (4, "em", "math"), "mmlu": (5, "acc", None),
          "piqa": (0, "acc", None), "triviaqa": (5, "em", "text")}
RULES = ("text", "exact", "number", "math")
FIELDS = ("answer", "choices", "context", "id", "question")
_MULTILINE = ("\n\n", "Question:")
STOPS = {"text": ("\n", ". ", ", "), "exact": _MULTILINE, "number": _MULTILINE,
         "math": _MULTILINE}
FEWSHOT_SEPARATOR = "\n\n"
MIN_BUCKET = 16


class TaskError(ValueError):
    """A task file or evaluation setting that cannot be used; the message names the bad value."""


# ------------------------------------------------------------------------------- task files
@dataclasses.dataclass(frozen=True)
class Example:
    line: int  # 1-based line in its file
    prompt: str  # the rendered query, without the answer
    choices: tuple[str, ...] | None  # multiple choice; None for generation
    answer: int | tuple[str, ...]  # index of the right choice, or the accepted answers

    @property
    def target(self) -> str:
        """The gold continuation (a solved few-shot example shows this)."""
        return self.choices[self.answer] if self.choices is not None else self.answer[0]


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    path: str
    kind: str  # "choice" | "generate"
    examples: tuple[Example, ...]
    fewshot: tuple[Example, ...] | None  # the dev file's examples; None = the same file
    fewshot_path: str | None
    shots: int
    metric: str  # headline metric
    rule: str  # answer rule (generation)

    @property
    def benchmark(self) -> str | None:
        return benchmark_of(self.name)


def benchmark_of(name: str) -> str | None:
    """The Table 4 benchmark a task name refers to (its first alphanumeric word), or None."""
    word = re.split(r"[^a-z0-9]+", name.lower().strip())[0] if name else ""
    return word if word in TABLE4 else None


def render_prompt(context: str | None, question: str | None) -> str:
    if question is None:
        return context
    query = f"Question: {question}\nAnswer:"
    return query if not context else f"{context}\n{query}"


def join_target(prompt: str, target: str) -> str:
    """The separator between a prompt and its continuation: one space, unless either side
    already has whitespace there or the prompt is empty."""
    if not prompt or prompt[-1].isspace() or not target or target[0].isspace():
        return ""
    return " "


def _parse_line(obj, where: str, kind: str | None) -> tuple[str, Example]:
    if not isinstance(obj, dict):
        raise TaskError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        raise TaskError(f"{where}: unknown field {unknown[0]!r}; allowed: {', '.join(FIELDS)}")
    for key in ("context", "question"):
        if key in obj and not isinstance(obj[key], str):
            raise TaskError(f"{where}: {key!r} must be a string, got {obj[key]!r:.60}")
    if "context" not in obj and "question" not in obj:
        raise TaskError(f"{where}: needs 'context' or 'question' (the prompt)")
    if "answer" not in obj:
        raise TaskError(f"{where}: missing field 'answer'")
    line_kind = "choice" if "choices" in obj else "generate"
    if kind is not None and line_kind != kind:
        described = {"choice": "multiple-choice", "generate": "generation"}
        raise TaskError(f"{where}: a {described[line_kind]} example in a file of "
                        f"{described[kind]} examples; one task type per file")
    prompt = render_prompt(obj.get("context"), obj.get("question"))
    answer = obj["answer"]
    if line_kind == "choice":
        choices = obj["choices"]
        if (not isinstance(choices, list) or len(choices) < 2
                or not all(isinstance(c, str) and c for c in choices)):
            raise TaskError(f"{where}: 'choices' must be a list of at least 2 non-empty strings")
        if not isinstance(answer, int) or isinstance(answer, bool):
            raise TaskError(f"{where}: 'answer' must be the index of the right choice, "
                            f"got {answer!r:.60}")
        if not 0 <= answer < len(choices):
            raise TaskError(f"{where}: answer {answer} is out of range for {len(choices)} "
                            f"choices (allowed: 0..{len(choices) - 1})")
        return line_kind, Example(0, prompt, tuple(choices), answer)
    aliases = [answer] if isinstance(answer, str) else answer
    if (not isinstance(aliases, list) or not aliases
            or not all(isinstance(a, str) and a.strip() for a in aliases)):
        raise TaskError(f"{where}: 'answer' must be a non-empty string or a list of them, "
                        f"got {answer!r:.60}")
    return line_kind, Example(0, prompt, None, tuple(aliases))


def read_examples(path: str) -> tuple[str, tuple[Example, ...]]:
    """(kind, examples) of a JSONL task file; raises TaskError naming the file and line."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise TaskError(f"cannot read task file {path!r}: {reason}") from None
    kind, examples = None, []
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        where = f"{path} line {number}"
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise TaskError(f"{where}: not valid JSON ({e.msg})") from None
        kind, example = _parse_line(obj, where, kind)
        examples.append(dataclasses.replace(example, line=number))
    if not examples:
        raise TaskError(f"task file {path!r} has no examples")
    return kind, tuple(examples)


def dev_path(path: str) -> str:
    """`<stem>.dev.jsonl` next to `<stem>.jsonl`: the few-shot source when it exists."""
    stem, _ = os.path.splitext(path)
    return f"{stem}.dev.jsonl"


def load_task(spec: str, shots: int | None = None) -> Task:
    """A task from `[NAME=]PATH`; `shots` None = the Table 4 default of the name (else 0)."""
    name, sep, path = spec.partition("=")
    if not sep or os.path.exists(spec):
        name, path = "", spec
    if not path:
        raise TaskError(f"--task {spec!r}: expected [NAME=]PATH to a .jsonl file")
    if not os.path.isfile(path):
        raise TaskError(f"task file {path!r} does not exist")
    name = name or os.path.splitext(os.path.basename(path))[0]
    kind, examples = read_examples(path)
    fewshot, few_path = None, dev_path(path)
    if os.path.isfile(few_path) and os.path.abspath(few_path) != os.path.abspath(path):
        few_kind, fewshot = read_examples(few_path)
        if few_kind != kind:
            raise TaskError(f"few-shot file {few_path!r} holds {few_kind} examples but "
                            f"{path!r} holds {kind} examples")
    else:
        few_path = None
    bench = benchmark_of(name)
    default_shots, metric, rule = TABLE4.get(bench, (0, None, None))
    metric = metric or ("acc" if kind == "choice" else "em")
    if kind == "choice" and metric not in ("acc", "acc_norm"):
        metric = "acc"
    if kind == "generate" and metric not in ("em", "f1"):
        metric = "em"
    shots = default_shots if shots is None else shots
    if not isinstance(shots, int) or shots < 0:
        raise TaskError(f"--shots {shots!r}; must be an integer >= 0")
    pool = len(fewshot) if fewshot is not None else len(examples) - 1
    if shots > pool:
        source = few_path or f"{path} without the scored example"
        raise TaskError(f"task {name!r}: {shots} shots but only {pool} few-shot examples in "
                        f"{source}; pass --shots {pool} or fewer, or add {dev_path(path)!r}")
    return Task(name, path, kind, examples, fewshot, few_path, shots, metric, rule or "text")


# ------------------------------------------------------------------------------- few-shot
def fewshot_indices(pool_size: int, k: int, index: int, seed: int,
                    exclude: int | None = None) -> list[int]:
    """k distinct indices into the pool, drawn by an RNG seeded with (seed, index); `exclude`
    (the scored example when the pool is its own file) is never drawn."""
    n = pool_size - (exclude is not None)
    if k > n:
        raise TaskError(f"{k} shots but only {n} few-shot examples")
    if k == 0:
        return []
    picks = np.random.default_rng([seed, index]).choice(n, size=k, replace=False)
    return [int(j) + (exclude is not None and j >= exclude) for j in picks]


def build_prompt(task: Task, index: int, seed: int) -> str:
    """The k-shot prompt of example `index` (solved examples, blank line, the query)."""
    pool = task.fewshot if task.fewshot is not None else task.examples
    exclude = None if task.fewshot is not None else index
    shots = [pool[j] for j in fewshot_indices(len(pool), task.shots, index, seed, exclude)]
    solved = [s.prompt + join_target(s.prompt, s.target) + s.target for s in shots]
    return FEWSHOT_SEPARATOR.join([*solved, task.examples[index].prompt])


# ------------------------------------------------------------------------------- answer rules
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_PUNCT = str.maketrans("", "", string.punctuation)


def _canonical_number(text: str) -> str | None:
    """"1,000.50" -> "1000.5", "$3" -> "3"; None when `text` is not a finite number."""
    try:
        value = decimal.Decimal(text.replace(",", "").replace("$", ""))
        if not value.is_finite():
            return None
        value = value.normalize()
        if value == value.to_integral_value():
            value = value.quantize(decimal.Decimal(1))
    except decimal.InvalidOperation:
        return None
    return format(value, "f")


def normalize_text(text: str) -> str:
    """SQuAD/TriviaQA normalisation (see the module docstring); numbers canonical as in DROP."""
    words = []
    for word in text.lower().split():
        number = _canonical_number(word.rstrip(".,;:!?"))
        words.append(number if number is not None else word.translate(_PUNCT))
    return " ".join(_ARTICLES.sub(" ", " ".join(words)).split())


def _after_last(text: str, marker: str) -> str | None:
    at = text.lower().rfind(marker)
    return None if at < 0 else text[at + len(marker):]


def _last_boxed(text: str) -> str | None:
    at = text.rfind("\\boxed{")
    if at < 0:
        return None
    depth, start = 0, at + len("\\boxed{")
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth < 0:
            return text[start:i]
    return None


def extract_answer(text: str, rule: str) -> str:
    """The comparable form of `text` (a generation or a gold answer) under `rule`."""
    if rule == "text":
        return normalize_text(text)
    if rule == "exact":
        tail = _after_last(text, "answer is")
        lines = [line.strip() for line in (text if tail is None else tail).splitlines()]
        first = next((line for line in lines if line), "")
        return first.rstrip(".").strip().casefold()
    if rule == "number":
        tail = _after_last(text, "####")
        if tail is None:
            tail = _after_last(text, "answer is")
        numbers = _NUMBER.findall(tail if tail is not None and _NUMBER.search(tail) else text)
        return (_canonical_number(numbers[-1]) or "") if numbers else ""
    if rule == "math":
        answer = _last_boxed(text)
        if answer is None:
            answer = _after_last(text, "answer is")
        answer = text if answer is None else answer
        for old, new in (("\\left", ""), ("\\right", ""), ("\\!", ""), ("$", ""),
                         ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac")):
            answer = answer.replace(old, new)
        answer = "".join(answer.split()).rstrip(".")
        return _canonical_number(answer) or answer
    raise TaskError(f"answer rule {rule!r}; allowed: {', '.join(RULES)}")


def exact_match(prediction: str, aliases, rule: str = "text") -> bool:
    """True when the prediction equals any alias after the answer rule (empty never matches)."""
    pred = extract_answer(prediction, rule)
    return bool(pred) and any(pred == extract_answer(a, rule) for a in aliases)


def f1_score(prediction: str, aliases) -> float:
    """Token-level F1 of the normalised bags of words, the best over the aliases (SQuAD/DROP)."""
    pred = normalize_text(prediction).split()
    best = 0.0
    for alias in aliases:
        gold = normalize_text(alias).split()
        common = sum((collections.Counter(pred) & collections.Counter(gold)).values())
        if not pred or not gold:
            best = max(best, float(pred == gold))
        elif common:
            p, r = common / len(pred), common / len(gold)
            best = max(best, 2 * p * r / (p + r))
    return best


def cut_at_stop(text: str, stops) -> str:
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


# ------------------------------------------------------------------------------- the model
def bucket(n: int, cap: int) -> int:
    """Next power of two >= n (at least MIN_BUCKET), at most `cap`."""
    return min(max(MIN_BUCKET, 1 << max(n - 1, 0).bit_length()), cap)


def _loglik(graphdef, state, inputs_BxT, targets_BxT, mask_BxT):
    """Summed log-probability of the masked targets, per row."""
    logits, _ = nnx.merge(graphdef, state)(inputs_BxT)
    logp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp, targets_BxT[..., None], axis=-1)[..., 0]
    return jnp.sum(picked * mask_BxT, axis=-1)


def _next_token(graphdef, state, tokens_BxT, last_B, *, vocab_limit: int):
    """Greedy next token after position `last_B` of each row (ids below `vocab_limit`)."""
    logits, _ = nnx.merge(graphdef, state)(tokens_BxT)
    row_BxV = logits[jnp.arange(tokens_BxT.shape[0]), last_B, :vocab_limit]
    return jnp.argmax(row_BxV, axis=-1)


class Scorer:
    """Jitted log-likelihood and greedy decoding of a byte-level model. Every call pads to
    `batch_size` rows and a power-of-two length, so each task compiles a few shapes only."""

    def __init__(self, model: nnx.Module, *, batch_size: int = 16, max_len: int | None = None):
        self.graphdef, self.state = nnx.split(model)
        self.batch_size = batch_size
        self.max_len = max_len or model.cfg.max_seq_len
        self._loglik = jax.jit(functools.partial(_loglik, self.graphdef))
        self._next = jax.jit(functools.partial(_next_token, self.graphdef,
                                               vocab_limit=min(data.VOCAB_SIZE,
                                                               model.cfg.vocab_size)))

    def _batches(self, lengths):
        order = np.argsort(lengths, kind="stable")  # similar lengths share a batch
        return [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def loglikelihood(self, requests: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """Summed log-probability of each continuation given its context (token arrays);
        contexts are cut from the left so context + continuation fits `max_len` + 1 tokens."""
        seqs, n_cont = [], []
        for ctx, cont in requests:
            if len(ctx) == 0:  # no BOS in byte-level data: condition on a line break instead
                ctx = data.encode("\n")
            if len(cont) == 0 or len(cont) > self.max_len:
                raise TaskError(f"a continuation of {len(cont)} tokens does not fit the "
                                f"model's context of {self.max_len} tokens")
            full = np.concatenate([ctx, cont])[-(self.max_len + 1):]
            seqs.append(full)
            n_cont.append(len(cont))
        out = np.zeros(len(seqs))
        for rows in self._batches([len(s) for s in seqs]):
            t = bucket(max(len(seqs[r]) for r in rows) - 1, self.max_len)
            inputs = np.zeros((self.batch_size, t), np.int32)
            targets = np.zeros((self.batch_size, t), np.int32)
            mask = np.zeros((self.batch_size, t), np.float32)
            for i, r in enumerate(rows):
                s = seqs[r]
                inputs[i, :len(s) - 1], targets[i, :len(s) - 1] = s[:-1], s[1:]
                mask[i, len(s) - 1 - n_cont[r]:len(s) - 1] = 1.0
            out[rows] = np.asarray(self._loglik(self.state, inputs, targets, mask))[:len(rows)]
        return out

    def greedy(self, prompts: list[np.ndarray], max_new_tokens: int,
               stops=("\n",)) -> list[str]:
        """Greedy continuation of each prompt until a stop string or `max_new_tokens`;
        prompts are cut from the left to leave room for the new tokens."""
        if not 1 <= max_new_tokens < self.max_len:
            raise TaskError(f"--max-new-tokens {max_new_tokens}; must be in 1..{self.max_len - 1}"
                            f" (the model's context is {self.max_len} tokens)")
        room = self.max_len - max_new_tokens
        prompts = [p[-room:] if len(p) else data.encode("\n") for p in prompts]  # as above
        texts = [""] * len(prompts)
        for rows in self._batches([len(p) for p in prompts]):
            t = bucket(max(len(prompts[r]) for r in rows) + max_new_tokens, self.max_len)
            tokens = np.zeros((self.batch_size, t), np.int32)
            length = np.ones(self.batch_size, np.int32)
            for i, r in enumerate(rows):
                tokens[i, :len(prompts[r])], length[i] = prompts[r], len(prompts[r])
            new = [[] for _ in rows]
            active = np.zeros(self.batch_size, bool)
            active[:len(rows)] = True
            for _ in range(max_new_tokens):
                nxt = np.asarray(self._next(self.state, tokens, length - 1))
                for i in np.flatnonzero(active):
                    tokens[i, length[i]] = nxt[i]
                    length[i] += 1
                    new[i].append(int(nxt[i]))
                    text = data.decode(new[i])
                    if any(s in text for s in stops):
                        active[i] = False
                if not active.any():
                    break
            for i, r in enumerate(rows):
                texts[r] = cut_at_stop(data.decode(new[i]), stops)
        return texts


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


def load_model(run_dir: str, step: int | None = None):
    """(model with the checkpoint's weights, Config, step) of a run directory."""
    from mhc import checkpoint, rundir
    from mhc.model import Decoder

    if not os.path.isdir(run_dir):
        raise TaskError(f"run directory {run_dir!r} does not exist")
    if not os.path.isfile(os.path.join(run_dir, "config.json")):
        raise TaskError(f"{run_dir!r} has no config.json (not an mhc run directory)")
    cfg = rundir.load_run_config(run_dir)
    check_byte_level(cfg)
    ckpts = checkpoint.directory(run_dir)  # complete steps only: orbax renames temp dirs last
    steps = sorted(int(d) for d in os.listdir(ckpts) if d.isdigit()) if os.path.isdir(ckpts) else []
    if not steps:
        raise TaskError(f"run {run_dir!r} has no checkpoint (train with checkpoint=true)")
    if step is not None and step not in steps:
        raise TaskError(f"--step {step}: no such checkpoint in {run_dir!r}; available: "
                        f"{', '.join(map(str, steps))}")
    model = Decoder(cfg.model, rngs=nnx.Rngs(0))
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)  # orbax warns that read-only is read-only
    try:
        restored = checkpoint.restore(run_dir, model, step=step)
    finally:
        absl_logging.set_verbosity(verbosity)
    return model, cfg, restored.step


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
                owner.append((i, len(data.encode(cont))))
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
    model, cfg, restored_step = load_model(run_dir, step)
    if max_len is not None and max_len > cfg.model.max_seq_len:
        raise TaskError(f"--max-len {max_len} exceeds the model's max_seq_len="
                        f"{cfg.model.max_seq_len}")
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
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths))) for row in rows)
