"""`mhc eval` and paper_repro/table4_downstream.py: task-file parsing and every bad-input message,
answer normalisation, batched log-likelihood ranking and greedy decoding against direct references
on a tiny random model, deterministic few-shot prompts, and the CLI end to end on a 4-step run."""
import importlib.util
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mhc import data, evaluate, recipes, scoring, tasks
from mhc.cli import main
from mhc.config import ModelConfig, apply_overrides
from mhc.tasks import TaskError
from mhc.model import Decoder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures", "eval")


def fixture(name):
    return os.path.join(FIXTURES, name)


def _load_table4():
    path = os.path.join(REPO, "paper_repro", "table4_downstream.py")
    spec = importlib.util.spec_from_file_location("table4_downstream", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("table4")


@pytest.fixture(scope="module")
def run_dir(workdir):
    """The 4-step tiny mHC run of the table4 smoke mode (trained once; the smoke test reuses it)."""
    return _load_table4().smoke_runs(str(workdir))["mhc"]


@pytest.fixture(scope="module")
def tiny_model():
    cfg = ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, max_seq_len=64, residual="mhc")
    return Decoder(cfg, rngs=nnx.Rngs(3))


def write_lines(path, *lines):
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


# ------------------------------------------------------------------------------- task files
def test_fixtures_parse_with_table4_defaults():
    expected = {"bbh_mini": ("generate", 3, "em", "exact"),
                "drop_mini": ("generate", 3, "f1", "text"),
                "gsm8k_mini": ("generate", 8, "em", "number"),
                "hellaswag_mini": ("choice", 10, "acc", "text"),
                "math_mini": ("generate", 4, "em", "math"),
                "mmlu_mini": ("choice", 5, "acc", "text"),
                "piqa_mini": ("choice", 0, "acc", "text"),
                "triviaqa_mini": ("generate", 5, "em", "text"),
                "kjv_cloze": ("choice", 0, "acc", "text"),
                "kjv_complete": ("generate", 0, "em", "text")}
    for name, (kind, shots, metric, rule) in expected.items():
        task = tasks.load_task(fixture(f"{name}.jsonl"))
        assert (task.kind, task.shots, task.metric, task.rule) == (kind, shots, metric, rule), name
        assert task.benchmark == (None if name.startswith("kjv") else name.split("_")[0])
    hs = tasks.load_task(fixture("hellaswag_mini.jsonl"))
    assert len(hs.examples) == 4 and len(hs.fewshot) == 10  # 10 shots from the .dev file
    assert hs.fewshot_path.endswith("hellaswag_mini.dev.jsonl")
    assert hs.examples[1].choices[hs.examples[1].answer] == "pulls out the weeds one by one."
    tq = tasks.load_task("TriviaQA-wiki=" + fixture("triviaqa_mini.jsonl"), shots=2)
    assert (tq.name, tq.shots, tq.benchmark, tq.fewshot) == ("TriviaQA-wiki", 2, "triviaqa", None)
    other = tasks.load_task("trivia=" + fixture("triviaqa_mini.jsonl"))  # not a Table 4 name
    assert (other.benchmark, other.shots, other.metric, other.rule) == (None, 0, "em", "text")
    assert tq.examples[0].answer == ("Rome", "Roma") and tq.examples[0].line == 1
    mmlu = tasks.load_task(fixture("mmlu_mini.jsonl"))
    assert mmlu.examples[0].prompt.startswith("Question: What is 2 + 3?\nA. 4\n")
    assert mmlu.examples[0].prompt.endswith("D. 7\nAnswer:")
    drop = tasks.load_task(fixture("drop_mini.jsonl")).examples[0].prompt
    assert drop.startswith("The Bears scored first") and "\nQuestion: How many field" in drop


BAD_LINES = [
    ('{"question": "q", "answer": "a"', "line 2: not valid JSON"),
    ('["q", "a"]', "line 2: expected a JSON object, got list"),
    ('{"question": "q", "answer": "a", "label": 1}', "line 2: unknown field 'label'; allowed: "
                                                     "answer, choices, context, id, question"),
    ('{"question": "q"}', "line 2: missing field 'answer'"),
    ('{"answer": "a"}', "line 2: needs 'context' or 'question'"),
    ('{"question": 3, "answer": "a"}', "line 2: 'question' must be a string"),
    ('{"question": "q", "answer": ""}', "line 2: 'answer' must be a non-empty string or a list"),
    ('{"question": "q", "answer": []}', "line 2: 'answer' must be a non-empty string or a list"),
    ('{"question": "q", "choices": ["x", "y"], "answer": 0}',
     "line 2: a multiple-choice example in a file of generation examples"),
]
BAD_CHOICE_LINES = [
    ('{"context": "c", "choices": ["x", "y"], "answer": 2}',
     "line 2: answer 2 is out of range for 2 choices (allowed: 0..1)"),
    ('{"context": "c", "choices": ["x", "y"], "answer": -1}', "answer -1 is out of range"),
    ('{"context": "c", "choices": ["x", "y"], "answer": true}',
     "line 2: 'answer' must be the index of the right choice"),
    ('{"context": "c", "choices": ["x", "y"], "answer": "x"}', "must be the index"),
    ('{"context": "c", "choices": ["x"], "answer": 0}', "at least 2 non-empty strings"),
    ('{"context": "c", "choices": "xy", "answer": 0}', "at least 2 non-empty strings"),
    ('{"context": "c", "answer": "x"}', "a generation example in a file of multiple-choice"),
]


@pytest.mark.parametrize("line,message", BAD_LINES)
def test_bad_generation_line_names_file_and_line(tmp_path, line, message):
    path = write_lines(tmp_path / "t.jsonl", '{"question": "q", "answer": "a"}', line)
    with pytest.raises(TaskError, match=None) as e:
        tasks.read_examples(path)
    assert str(e.value).startswith(path) and message in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("line,message", BAD_CHOICE_LINES)
def test_bad_choice_line_names_file_and_line(tmp_path, line, message):
    path = write_lines(tmp_path / "t.jsonl", '{"context": "c", "choices": ["x", "y"], "answer": 0}',
                       line)
    with pytest.raises(TaskError) as e:
        tasks.read_examples(path)
    assert message in str(e.value)


def test_bad_task_files_and_settings(tmp_path):
    def message(fn, *args, **kwargs):
        with pytest.raises(TaskError) as e:
            fn(*args, **kwargs)
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "does not exist" in message(tasks.load_task, str(tmp_path / "missing.jsonl"))
    assert "no examples" in message(tasks.load_task, write_lines(tmp_path / "e.jsonl", ""))
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00")
    assert "cannot read task file" in message(tasks.read_examples, str(tmp_path / "bin.jsonl"))
    assert "cannot read task file" in message(tasks.read_examples, str(tmp_path))
    msg = message(tasks.load_task, fixture("piqa_mini.jsonl"), shots=6)
    assert "6 shots but only 5 few-shot examples" in msg and "--shots 5" in msg
    assert "--shots -1" in message(tasks.load_task, fixture("piqa_mini.jsonl"), shots=-1)
    gsm = tmp_path / "gsm8k.jsonl"  # named like GSM8K: 8 shots by default, only 1 other example
    write_lines(gsm, '{"question": "q", "answer": "#### 1"}', '{"question": "r", "answer": "2"}')
    assert "8 shots but only 1" in message(tasks.load_task, str(gsm))
    write_lines(tmp_path / "gsm8k.dev.jsonl",
                '{"context": "c", "choices": ["a", "b"], "answer": 0}')
    assert "few-shot file" in message(tasks.load_task, str(gsm), shots=0)
    run = str(tmp_path)
    assert "--limit 0" in message(evaluate.run, run, [fixture("piqa_mini.jsonl")], limit=0)
    assert "no task given" in message(evaluate.run, run, [])
    assert "two tasks are named 'piqa_mini'" in message(
        evaluate.run, run, [fixture("piqa_mini.jsonl")] * 2)


def test_byte_level_only(tmp_path):
    cfg = recipes.get("tiny")
    evaluate.check_byte_level(cfg)  # the bundled corpus
    tokens = tmp_path / "train.bin"
    np.zeros(10, np.uint16).tofile(tokens)
    cfg = apply_overrides(cfg, [f"corpus={tokens}"])
    with pytest.raises(TaskError, match="sidecar .* is missing"):
        evaluate.check_byte_level(cfg)
    tokens.with_suffix(".json").write_text(json.dumps({"dtype": "uint16", "tokenizer": "bytes"}))
    evaluate.check_byte_level(cfg)
    tokens.with_suffix(".json").write_text(json.dumps({"dtype": "uint16",
                                                       "tokenizer": "tokenizer.json"}))
    with pytest.raises(TaskError, match="tokenized with 'tokenizer.json'; mhc eval supports "
                                        "byte-level runs only"):
        evaluate.check_byte_level(cfg)


# ------------------------------------------------------------------------------- answer rules
def test_text_normalisation_exact_match_and_f1():
    norm = tasks.normalize_text
    assert norm("  The Indian   Ocean!") == "indian ocean"
    assert norm("An apple, a pear.") == "apple pear"
    assert norm("1,000.0 people") == norm("1000 people") == "1000 people"
    assert tasks.exact_match("the Indian Ocean", ["Indian Ocean"])
    assert tasks.exact_match("Roma", ["Rome", "Roma"])
    assert not tasks.exact_match("Rome wasn't", ["Rome"])
    assert not tasks.exact_match("", ["a"]) and not tasks.exact_match("the", ["a"])
    assert tasks.f1_score("the cat sat", ["cat sat down"]) == pytest.approx(0.8)
    assert tasks.f1_score("cat", ["dog", "cat"]) == 1.0
    assert tasks.f1_score("dog", ["cat"]) == 0.0 and tasks.f1_score("", ["cat"]) == 0.0
    assert tasks.f1_score("the 2 goals", ["two goals", "2"]) == pytest.approx(2 / 3)


def test_answer_rules():
    ext = tasks.extract_answer
    # GSM8K: the number after '####', else the last number; commas, '$' and '.0' do not matter
    assert ext("She has 20 - 8 = 12 stickers left.\n#### 1,200", "number") == "1200"
    assert ext("So 3 + 4 = 7. The answer is $7.00.", "number") == "7"
    assert ext("we get 3.50 and then 12", "number") == "12"
    assert ext("no number here", "number") == ""
    assert tasks.exact_match("It sold 1200 + 800 = 2000 cups.", ["#### 2,000"], "number")
    assert not tasks.exact_match("#### 20", ["#### 2,000"], "number")
    # MATH: the last \boxed{...} (nested braces), else after 'answer is'
    gold = "Writing both over 4 gives $\\frac{2}{4} + \\frac{1}{4} = \\boxed{\\frac{3}{4}}$."
    assert ext(gold, "math") == "\\frac{3}{4}"
    assert tasks.exact_match("so the answer is $\\dfrac{3}{4}$.", [gold], "math")
    assert tasks.exact_match("\\boxed{4.0}", ["$x = \\boxed{4}$"], "math")
    assert not tasks.exact_match("\\boxed{5}", ["\\boxed{4}"], "math")
    # BBH: after the last 'answer is', else the first non-empty line; case and final '.' ignored
    assert ext("\nFalse\nQuestion: more", "exact") == "false"
    assert ext("A is true. So the answer is (A).", "exact") == "(a)"
    assert tasks.exact_match(" True.", ["True"], "exact")
    assert not tasks.exact_match(" (B)", ["(A)"], "exact")
    with pytest.raises(TaskError, match="answer rule 'fuzzy'"):
        ext("x", "fuzzy")
    assert tasks.cut_at_stop(" Paris. It is", tasks.STOPS["text"]) == " Paris"
    assert tasks.cut_at_stop(" 3.5 apples\nQ", tasks.STOPS["text"]) == " 3.5 apples"
    assert tasks.cut_at_stop("a\nb\n\nQuestion:", tasks.STOPS["number"]) == "a\nb"


# ------------------------------------------------------------------------------- few-shot
def test_fewshot_draw_is_deterministic_and_excludes_the_scored_example():
    for index in range(12):
        picks = tasks.fewshot_indices(12, 5, index, seed=7, exclude=index)
        assert picks == tasks.fewshot_indices(12, 5, index, seed=7, exclude=index)
        assert index not in picks and len(set(picks)) == 5 and all(0 <= j < 12 for j in picks)
    draws = {tuple(tasks.fewshot_indices(12, 5, 0, seed=s, exclude=0)) for s in range(5)}
    assert len(draws) > 1  # the seed matters
    assert sorted(tasks.fewshot_indices(12, 11, 3, 0, exclude=3)) == [
        j for j in range(12) if j != 3]

    task = tasks.load_task(fixture("mmlu_mini.jsonl"))  # 5-shot from the same file
    for i, ex in enumerate(task.examples):
        prompt = tasks.build_prompt(task, i, seed=1)
        assert prompt == tasks.build_prompt(task, i, seed=1)
        parts = prompt.split(tasks.FEWSHOT_SEPARATOR)
        assert len(parts) == 6 and parts[-1] == ex.prompt
        for part in parts[:-1]:  # solved examples: prompt, space, the right letter
            shot = next(e for e in task.examples if part.startswith(e.prompt))
            assert shot is not ex and part == f"{shot.prompt} {'ABCD'[shot.answer]}"
    hs = tasks.load_task(fixture("hellaswag_mini.jsonl"))  # 10-shot from the .dev file
    prompt = tasks.build_prompt(hs, 0, seed=1)
    assert all(f"{e.prompt} {e.target}" in prompt for e in hs.fewshot)
    assert prompt.endswith(hs.examples[0].prompt) and prompt.count(hs.examples[0].prompt) == 1


def test_prompt_rendering():
    assert tasks.render_prompt("ctx", None) == "ctx"
    assert tasks.render_prompt(None, "q?") == "Question: q?\nAnswer:"
    assert tasks.render_prompt("ctx", "q?") == "ctx\nQuestion: q?\nAnswer:"
    assert tasks.join_target("Answer:", "x") == " "
    assert tasks.join_target("ctx ", "x") == "" and tasks.join_target("ctx", " x") == ""
    assert tasks.join_target("", "x") == ""


# ------------------------------------------------------------------------------- the model
def test_bucket():
    assert [scoring.bucket(n, 64) for n in (1, 16, 17, 33, 64, 65)] == [16, 16, 32, 64, 64, 64]
    assert scoring.bucket(100, 48) == 48


def test_batched_loglikelihood_equals_direct(tiny_model):
    graphdef, state = nnx.split(tiny_model)
    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)[0])
    rng = np.random.default_rng(0)
    # varied lengths (several buckets, a partly filled batch), one context longer than max_len
    shapes = [(5, 3), (20, 1), (1, 7), (40, 30), (90, 10), (0, 4)]
    requests = [(rng.integers(0, 256, c).astype(np.int32), rng.integers(0, 256, k).astype(np.int32))
                for c, k in shapes]
    got = scoring.Scorer(tiny_model, batch_size=4).loglikelihood(requests)
    for (ctx, cont), value in zip(requests, got):
        if len(ctx) == 0:
            ctx = data.encode("\n")
        full = np.concatenate([ctx, cont])[-65:]  # left truncation to max_seq_len + 1
        logp = jax.nn.log_softmax(forward(state, jnp.asarray(full[None, :-1]))[0], -1)
        direct = sum(float(logp[t - 1, full[t]]) for t in range(len(full) - len(cont), len(full)))
        assert value == pytest.approx(direct, rel=1e-4, abs=1e-3)
    with pytest.raises(TaskError, match="continuation of 70 tokens does not fit"):
        scoring.Scorer(tiny_model).loglikelihood([(np.zeros(3, np.int32),
                                                   np.zeros(70, np.int32))])


def test_ranking_picks_the_likeliest_choice(tiny_model, tmp_path):
    scorer = scoring.Scorer(tiny_model, batch_size=4)
    path = write_lines(tmp_path / "t.jsonl", *[json.dumps(
        {"context": c, "choices": ["ab", "abcdef", "z"], "answer": a})
        for c, a in (("hello", 0), ("world", 1), ("again", 2))])
    task = tasks.load_task(path)
    out = evaluate.evaluate_task(scorer, task)
    for i, pred in enumerate(out["predictions"]):
        ll = scorer.loglikelihood([(data.encode(task.examples[i].prompt), data.encode(" " + c))
                                   for c in task.examples[i].choices])
        assert pred["pred"] == int(np.argmax(ll))
        # per byte of the choice, without the space before it (lm-eval's acc_bytes)
        assert pred["pred_norm"] == int(np.argmax(ll / np.array([2, 6, 1])))
    assert out["metrics"]["acc"] == np.mean([p["pred"] == p["answer"]
                                             for p in out["predictions"]])
    assert out["n"] == 3 and out["headline"] == "acc"


def test_greedy_equals_stepwise_argmax(tiny_model):
    graphdef, state = nnx.split(tiny_model)
    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)[0])
    prompts = [data.encode(t) for t in ("In the beginning", "x", "God said, Let there be")]
    prompts.append(np.arange(70, dtype=np.int32) % 200 + 32)  # longer than the context
    max_new = 6
    refs = []
    for prompt in prompts:
        tokens, new = list(prompt[-(64 - max_new):]), []  # cut to leave room for new tokens
        for _ in range(max_new):  # unbatched reference in a fixed 64-token buffer (causal)
            buf = np.zeros((1, 64), np.int32)
            buf[0, :len(tokens)] = tokens
            nxt = int(np.argmax(np.asarray(forward(state, buf))[0, len(tokens) - 1, :256]))
            tokens.append(nxt)
            new.append(nxt)
        refs.append(new)
    scorer = scoring.Scorer(tiny_model, batch_size=3)  # two batches, one partly filled
    assert scorer.greedy(prompts, max_new, stops=()) == [data.decode(r) for r in refs]
    # an ASCII stop string the first row generates: that row stops there, the cut drops it
    k = next(j for j in range(1, max_new) if refs[0][j] < 128)
    stop = chr(refs[0][k])
    assert scorer.greedy(prompts, max_new, stops=(stop,)) == [
        tasks.cut_at_stop(data.decode(r), (stop,)) for r in refs]
    with pytest.raises(TaskError, match="--max-new-tokens 64"):
        scoring.Scorer(tiny_model).greedy(prompts, 64)


# ------------------------------------------------------------------------------- end to end
def test_cli_eval_end_to_end(run_dir, tmp_path, capsys):
    out = tmp_path / "results.json"
    argv = ["eval", run_dir, "--task", fixture("piqa_mini.jsonl"), "--task",
            "kjv=" + fixture("kjv_complete.jsonl"), "--task", fixture("mmlu_mini.jsonl"),
            "--shots", "1", "--limit", "3", "--max-new-tokens", "4", "--max-len", "128",
            "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "checkpoint step 4 (mhc)" in printed
    table = [line.split() for line in printed.splitlines()]
    assert ["task", "metric", "value", "n", "shots"] in table
    for task, metric in (("piqa_mini", "acc"), ("piqa_mini", "acc_norm"), ("kjv", "em"),
                         ("kjv", "f1"), ("mmlu_mini", "acc")):
        assert any(row[:2] == [task, metric] and row[3:] == ["3", "1"] for row in table), task
    results = json.loads(out.read_text())
    assert results["step"] == 4 and set(results["tasks"]) == {"piqa_mini", "kjv", "mmlu_mini"}
    for name, r in results["tasks"].items():
        assert r["n"] == 3 and r["shots"] == 1 and len(r["predictions"]) == 3
        assert all(0.0 <= v <= 1.0 for v in r["metrics"].values())
        assert r["value"] == r["metrics"][r["headline"]]
    kjv = results["tasks"]["kjv"]["predictions"]
    assert all(isinstance(p["generation"], str) and len(p["generation"]) <= 4 for p in kjv)


def test_cli_eval_bad_input_exits_2_with_one_line(run_dir, tmp_path, capsys):
    piqa = fixture("piqa_mini.jsonl")
    bad = write_lines(tmp_path / "bad.jsonl",
                      '{"context": "c", "choices": ["x", "y"], "answer": 0}',
                      '{"context": "c", "choices": ["x", "y"], "answer": 5}')
    no_ckpt = tmp_path / "no_ckpt"
    no_ckpt.mkdir()
    shutil.copy(os.path.join(run_dir, "config.json"), no_ckpt / "config.json")
    cases = [
        (["eval", str(tmp_path / "nope"), "--task", piqa], "run directory"),
        (["eval", str(tmp_path), "--task", piqa], "has no config.json"),
        (["eval", str(no_ckpt), "--task", piqa], "has no checkpoint"),
        (["eval", run_dir, "--task", piqa, "--step", "7"], "--step 7: no such checkpoint"),
        (["eval", run_dir, "--task", bad], "bad.jsonl line 2: answer 5 is out of range"),
        (["eval", run_dir, "--task", str(tmp_path / "none.jsonl")], "does not exist"),
        (["eval", run_dir, "--task", piqa, "--shots", "9"], "9 shots but only 5"),
        (["eval", run_dir, "--task", piqa, "--max-len", "4096"], "exceeds the model's max_seq"),
        (["eval", run_dir], "the following arguments are required: --task"),
        (["eval", run_dir, "--task", piqa, "--bogus"], "unrecognized arguments: --bogus"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        lines = [line for line in err.splitlines() if not line.startswith("WARNING:absl")]
        assert len(lines) == 1 and lines[0].startswith("mhc: error: ") and message in lines[0], \
            (argv, err)


def test_table4_smoke(workdir, run_dir, capsys):
    table4 = _load_table4()
    assert table4.main(["--smoke", "--out", str(workdir)]) == 0  # reuses the module's run
    md = (workdir / "table4_downstream.md").read_text()
    csv = (workdir / "table4_downstream.csv").read_text()
    assert "| GSM8K (EM, 8-shot) | 46.7 / 53.2 / 53.8 | not bundled" in md
    assert "| fixture kjv_cloze (acc, 0-shot, n=2) | not in the paper | - / - / " in md
    assert md.count("| n/a |") == 8 + 10 and "not bundled" in md
    assert csv.splitlines()[0] == "quantity,paper,ours,agrees" and len(csv.splitlines()) == 19
    assert "== mHC" in capsys.readouterr().out
    assert table4.main(["--runs", "mhc", "--smoke", "--out", str(workdir)]) == 2
    assert "expected KIND=DIR" in capsys.readouterr().err


def test_table4_rows_fill_benchmarks_from_user_tasks():
    table4 = _load_table4()

    def result(values):
        return {"tasks": {name: {"benchmark": tasks.benchmark_of(name), "value": v, "n": n,
                                 "shots": 5, "headline": "acc"}
                          for name, (v, n) in values.items()}}
    rows = table4.build_rows({"residual": result({"mmlu_a": (0.5, 10), "mmlu_b": (0.2, 30),
                                                  "mine": (0.1, 4)}),
                              "mhc": result({"mmlu_a": (0.6, 10), "mmlu_b": (0.3, 30),
                                             "mine": (0.2, 4)})}, fixtures=False)
    mmlu = next(r for r in rows if r.quantity.startswith("MMLU"))
    assert mmlu.ours == "27.5 / - / 37.5 (n=40; 1 seed)"  # weighted by n
    assert mmlu.agrees == "inconclusive (1 seed; needs >= 3)"  # one checkpoint per kind: one seed
    assert next(r for r in rows if r.quantity.startswith("PIQA")).agrees == "n/a"
    assert rows[-1].quantity == "task mine (acc, 5-shot, n=4)"
    assert rows[-1].ours == "10.0 / - / 20.0"
