"""Task files of `mhc eval` (the formats of paper Table 4): parsing, few-shot prompts, answer rules.

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
"""
from __future__ import annotations

import collections
import dataclasses
import decimal
import json
import os
import re
import string

import numpy as np

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
