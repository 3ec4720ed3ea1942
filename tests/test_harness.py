"""The lm-evaluation-harness adapter (mhc/harness.py, `mhc eval --harness lm-eval`): each request
type against the scorer and direct references on a tiny random model, and lm-eval run offline on
the local tasks of tests/fixtures/lm_eval over a 4-step run giving the same per-choice
log-likelihoods, acc, acc_norm and generations as `mhc eval` on the same JSONL files. Skipped
where lm-eval is not installed (the oldest CI stack: the `eval` extra is not in it)."""
import json
import os
import sys
import tempfile

import jax
import numpy as np
import pytest
from flax import nnx

# lm-eval reads the datasets cache location at import: keep its files out of the user's home
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="mhc-hf-"))
pytest.importorskip("lm_eval", reason="the eval extra (pip install -e '.[eval]')")

from lm_eval.api.instance import Instance  # noqa: E402

from mhc import data, evaluate, harness, scoring, tasks  # noqa: E402
from mhc.cli import main  # noqa: E402
from mhc.config import ModelConfig  # noqa: E402
from mhc.model import Decoder  # noqa: E402
from mhc.tasks import TaskError  # noqa: E402
from tests.test_evaluate import run_dir, workdir  # noqa: E402,F401  (the trained 4-step run)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LM_TASKS = os.path.join(REPO, "tests", "fixtures", "lm_eval")


@pytest.fixture(scope="module")
def tiny_lm():
    cfg = ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, max_seq_len=64, residual="mhc")
    return harness.MhcLM(Decoder(cfg, rngs=nnx.Rngs(3)), batch_size=4)


def requests(kind, *args_list):
    return [Instance(request_type=kind, doc={}, arguments=args, idx=0) for args in args_list]


_FORWARD = {}  # jitted once per model: eager forwards (Sinkhorn loops op by op) take seconds


def direct_logp(lm, tokens):
    """log p(tokens[t] | tokens[:t]) for t >= 1, by one unbatched forward (no padding)."""
    graphdef, state = lm.scorer.graphdef, lm.scorer.state
    forward = _FORWARD.setdefault(id(graphdef), jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)[0]))
    logits = forward(state, np.asarray(tokens[None, :-1], np.int32))[0]
    logp = np.asarray(jax.nn.log_softmax(logits, -1))
    return logp[np.arange(len(tokens) - 1), tokens[1:]], np.asarray(logits)[:, :256]


# ------------------------------------------------------------------------------- the requests
def test_loglikelihood_and_is_greedy(tiny_lm):
    pairs = [("In the beginning", " God"), ("", "abc"), ("x" * 80, " tail")]
    got = tiny_lm.loglikelihood(requests("loglikelihood", *pairs))
    for (ctx, cont), (value, greedy) in zip(pairs, got):
        tokens = np.concatenate([data.encode(ctx or "\n"), data.encode(cont)])[-65:]
        logp, logits = direct_logp(tiny_lm, tokens)
        k = len(cont)
        assert value == pytest.approx(float(logp[-k:].sum()), rel=1e-4, abs=1e-3)
        assert greedy == bool(np.all(logits[-k:].argmax(-1) == tokens[-k:]))
    # the continuation greedy decoding produces reads as greedy (bytes: a random model's greedy
    # bytes need not be UTF-8, so they cannot round-trip through a string)
    tokens = data.encode("God said")
    for _ in range(3):
        tokens = np.append(tokens, direct_logp(tiny_lm, np.append(tokens, 0))[1][-1].argmax())
    _, greedy = tiny_lm.scorer.loglikelihood([(tokens[:-3], tokens[-3:])], with_greedy=True)
    assert greedy.tolist() == [True]
    assert tiny_lm.loglikelihood([]) == []


def test_rolling_scores_each_byte_once(tiny_lm):
    short, long = "Jesus wept.", "".join(chr(32 + i % 90) for i in range(100))  # 64 < 100 < 128
    got = tiny_lm.loglikelihood_rolling(requests("loglikelihood_rolling", (short,), (long,),
                                                 ("",)))
    logp, _ = direct_logp(tiny_lm, np.concatenate([data.encode("\n"), data.encode(short)]))
    assert got[0] == pytest.approx(float(logp.sum()), rel=1e-4)
    # lm-eval's windows for 100 bytes and a 64-token context: "\n" + bytes 0..62 predict bytes
    # 0..63; bytes 35..98 predict 36..99, of which the last 36 (64..99) count
    tokens = np.concatenate([data.encode("\n"), data.encode(long)])
    first, _ = direct_logp(tiny_lm, tokens[:65])
    last, _ = direct_logp(tiny_lm, tokens[36:101])
    assert got[1] == pytest.approx(float(first.sum() + last[-36:].sum()), rel=1e-4)
    assert got[2] == 0.0


def test_generate_until_is_the_scorers_greedy(tiny_lm):
    prompts = ["In the beginning", "x", "God said, Let there be"]
    gen = requests("generate_until", *[(p, {"until": ["\n"], "max_gen_toks": 5}) for p in prompts],
                   (prompts[0], {"until": "Q", "max_gen_toks": 500, "do_sample": False}))
    got = tiny_lm.generate_until(gen)
    expected = tiny_lm.scorer.greedy([data.encode(p) for p in prompts], 5, ("\n",))
    assert got[:3] == expected
    # max_gen_toks above the context is capped at half of it (32 of 64), "Q" a one-string stop
    assert got[3] == tiny_lm.scorer.greedy([data.encode(prompts[0])], 32, ("Q",))[0]
    with pytest.raises(TaskError, match="do_sample=True, temperature=0.7: the mhc adapter "
                                        "decodes greedily only"):
        tiny_lm.generate_until(requests("generate_until",
                                        ("x", {"do_sample": True, "temperature": 0.7})))
    with pytest.raises(TaskError, match="max_gen_toks 0; must be an integer >= 1"):
        tiny_lm.generate_until(requests("generate_until", ("x", {"max_gen_toks": 0})))


# ------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_lm_eval_matches_mhc_eval(run_dir, tmp_path, monkeypatch, capsys):  # noqa: F811
    monkeypatch.chdir(REPO)  # the task YAMLs name their JSONL relative to the repository
    out = tmp_path / "lm_eval.json"
    argv = ["eval", run_dir, "--harness", "lm-eval", "--tasks",
            "mhc_choice,mhc_complete,mhc_rolling", "--include-path", LM_TASKS,
            "--batch-size", "8", "--out", str(out)]
    assert main(argv) == 0
    assert os.environ["HF_DATASETS_OFFLINE"] == "1"
    printed = capsys.readouterr().out
    assert "checkpoint step 4 (mhc)" in printed
    table = [line.split() for line in printed.splitlines()]
    for task, metric in (("mhc_choice", "acc"), ("mhc_choice", "acc_norm"),
                         ("mhc_complete", "exact_match"), ("mhc_rolling", "bits_per_byte")):
        assert any(row[:2] == [task, metric] for row in table), (task, metric, printed)
    theirs = json.loads(out.read_text())

    ours = evaluate.run(run_dir, [os.path.join(LM_TASKS, "mhc_choice.jsonl"),
                                  os.path.join(LM_TASKS, "mhc_complete.jsonl")],
                        shots=0, batch_size=8, max_new_tokens=8)
    choice, complete = ours["tasks"]["mhc_choice"], ours["tasks"]["mhc_complete"]
    samples = sorted(theirs["samples"]["mhc_choice"], key=lambda s: s["doc_id"])
    assert len(samples) == choice["n"] == 39
    for sample, pred in zip(samples, choice["predictions"]):
        lls = [float(r[0]) for r in sample["filtered_resps"]]
        assert np.round(lls, 4).tolist() == pred["loglik"]  # what mhc eval reports, 4 decimals
        assert sample["acc"] == float(pred["pred"] == pred["answer"])
        assert sample["acc_norm"] == float(pred["pred_norm"] == pred["answer"])
    metrics = theirs["results"]["mhc_choice"]
    assert metrics["acc,none"] == choice["metrics"]["acc"]
    assert metrics["acc_norm,none"] == choice["metrics"]["acc_norm"]
    generations = [s["resps"][0][0] for s in sorted(theirs["samples"]["mhc_complete"],
                                                     key=lambda s: s["doc_id"])]
    assert generations == [p["generation"] for p in complete["predictions"]]
    rolling = theirs["results"]["mhc_rolling"]
    assert 0 < rolling["bits_per_byte,none"] < 8.5  # a 4-step byte model: near uniform (8 bits)


def test_bad_input_exits_2_with_one_line(run_dir, tmp_path, capsys):  # noqa: F811
    cases = [
        (["eval", run_dir, "--harness", "lm-eval"], "--harness lm-eval needs --tasks"),
        (["eval", run_dir, "--harness", "lm-eval", "--tasks", "mhc_choice", "--task", "x.jsonl"],
         "--task is for mhc's own evaluator"),
        (["eval", run_dir, "--tasks", "mhc_choice"], "--tasks is for --harness lm-eval"),
        (["eval", run_dir, "--harness", "lm-eval", "--tasks", "nope", "--include-path",
          LM_TASKS], "--tasks: no lm-eval task named 'nope' under --include-path"),
        (["eval", run_dir, "--harness", "lm-eval", "--tasks", "mhc_choice", "--include-path",
          str(tmp_path / "none")], "--include-path"),
        (["eval", str(tmp_path / "nope"), "--harness", "lm-eval", "--tasks", "mhc_choice"],
         "run directory"),
        (["eval", run_dir, "--harness", "lm-eval", "--tasks", "mhc_choice", "--limit", "0"],
         "--limit 0; must be an integer >= 1"),
        (["eval", run_dir, "--harness", "lm-eval", "--tasks", "mhc_choice", "--include-path",
          LM_TASKS, "--max-len", "4096"], "exceeds the model's max_seq_len"),
        (["eval", run_dir, "--harness", "bogus", "--tasks", "x"], "invalid choice: 'bogus'"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        lines = [line for line in err.splitlines() if line.startswith("mhc: error: ")]
        assert len(lines) == 1 and message in lines[0], (argv, err)


def test_without_lm_eval_one_line_says_how_to_install(tmp_path, monkeypatch, capsys):
    import mhc

    monkeypatch.setitem(sys.modules, "lm_eval.api.model", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "mhc.harness")
    monkeypatch.delattr(mhc, "harness")
    assert main(["eval", str(tmp_path), "--harness", "lm-eval", "--tasks", "mhc_choice"]) == 2
    assert capsys.readouterr().err == ("mhc: error: --harness lm-eval needs "
                                       "lm-evaluation-harness: pip install -e '.[eval]'\n")
