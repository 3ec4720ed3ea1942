"""The jitted scorer of `mhc eval`: log-likelihood of continuations and greedy decoding.

Efficiency: choice continuations are scored in batches padded to power-of-two lengths with one
jitted forward per batch (a few compiled shapes per task); greedy decoding recomputes the full
forward per token (there is no KV cache) in batches, also at bucketed lengths. Inputs are cut from
the left to the model's `max_seq_len`. Only byte-level runs (the bundled corpora, text files or
token files prepared without --tokenizer) are supported.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mhc import data
from mhc.tasks import TaskError, cut_at_stop

MIN_BUCKET = 16


def bucket(n: int, cap: int) -> int:
    """Next power of two >= n (at least MIN_BUCKET), at most `cap`."""
    return min(max(MIN_BUCKET, 1 << max(n - 1, 0).bit_length()), cap)


def _loglik(graphdef, state, inputs_BxT, targets_BxT, mask_BxT, *, vocab_limit: int):
    """Summed log-probability of the masked targets per row, and whether every masked target is
    the argmax (ids below `vocab_limit`, as greedy decoding picks): lm-eval's `is_greedy`. One
    program computes both, so `mhc eval` and the lm-eval adapter score with the same numbers."""
    logits, _ = nnx.merge(graphdef, state)(inputs_BxT)
    logp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp, targets_BxT[..., None], axis=-1)[..., 0]
    hit = jnp.argmax(logits[..., :vocab_limit], axis=-1) == targets_BxT
    return jnp.sum(picked * mask_BxT, axis=-1), jnp.all(hit | (mask_BxT == 0), axis=-1)


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
        vocab_limit = min(data.VOCAB_SIZE, model.cfg.vocab_size)
        self._loglik = jax.jit(functools.partial(_loglik, self.graphdef, vocab_limit=vocab_limit))
        self._next = jax.jit(functools.partial(_next_token, self.graphdef,
                                               vocab_limit=vocab_limit))

    def _batches(self, lengths):
        order = np.argsort(lengths, kind="stable")  # similar lengths share a batch
        return [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def loglikelihood(self, requests: list[tuple[np.ndarray, np.ndarray]], *,
                      with_greedy: bool = False):
        """Summed log-probability of each continuation given its context (token arrays);
        contexts are cut from the left so context + continuation fits `max_len` + 1 tokens.
        With `with_greedy`, also whether greedy decoding would produce each continuation."""
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
        out, greedy = np.zeros(len(seqs)), np.zeros(len(seqs), bool)
        for rows in self._batches([len(s) for s in seqs]):
            t = bucket(max(len(seqs[r]) for r in rows) - 1, self.max_len)
            inputs = np.zeros((self.batch_size, t), np.int32)
            targets = np.zeros((self.batch_size, t), np.int32)
            mask = np.zeros((self.batch_size, t), np.float32)
            for i, r in enumerate(rows):
                s = seqs[r]
                inputs[i, :len(s) - 1], targets[i, :len(s) - 1] = s[:-1], s[1:]
                mask[i, len(s) - 1 - n_cont[r]:len(s) - 1] = 1.0
            ll, hit = self._loglik(self.state, inputs, targets, mask)
            out[rows], greedy[rows] = np.asarray(ll)[:len(rows)], np.asarray(hit)[:len(rows)]
        return (out, greedy) if with_greedy else out

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

