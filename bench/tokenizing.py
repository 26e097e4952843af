"""Tokenizing in truncate mode on one core: the whole text (before) against the pre-cut (now).

(Not ``bench/tokenize.py``: scripts here put bench/ on ``sys.path``, where that name would hide the
standard library's ``tokenize``, which ``inspect`` imports.)

    python bench/tokenizing.py [--runs 3] [--docs-500 2000] [--docs-20k 50] [--block 1024]

Documents of 500 and of 20,000 tokens are built from the bundled Wikipedia sample's texts, shuffled
and joined with blank lines, cut at the target's token. Each setting tokenizes them in blocks of
``--block`` rows (``compute.block_rows``), as the tokenize stage does:

- **whole**: the code before the pre-cut, one batched call on the whole texts, the first overflow
  window kept (``_windows`` in pipelines/embed/tokenizer.py);
- **whole, one call a text**: the same, one call per text (the tokenizer's calls were already batched:
  this row shows what batching is worth);
- **pre-cut**: ``tokenize_texts`` now (pipelines/embed/precut.py), checked to give the same ids.

Settings: MiniLM (its WordPiece tokenizer, 256 tokens) and a bge-base-class setting: BERT WordPiece
(uncased, 30,522 pieces: bge-base-en-v1.5's vocabulary is bert-base-uncased's, as MiniLM's is, so
MiniLM's tokenizer *is* that tokenizer) at 512 tokens.

One core: the process is pinned to one CPU (``sched_setaffinity``), and ``TOKENIZERS_PARALLELISM=false``
and ``RAYON_NUM_THREADS=1`` are set before tokenizers loads, so a batched call encodes its texts one
after another (tokenizers would otherwise spread a batch over all cores with Rayon); no torch runs.

Printed per setting and document size: docs/s, the documents' tokens/s and the kept tokens/s (what
the GPU gets), medians over ``--runs``; then the CPU cores one GPU needs to be fed, from the GPU
tokens/s estimated in docs/scaling.md ("The 100M budget": an H100 does about 14M tokens/s of
MiniLM, an upper bound, and 1.78M of a bge-base-class model; no GPU was measured): cores = (GPU
tokens/s / kept tokens per document) / (pre-cut docs/s on one core).
"""

from __future__ import annotations

import os

os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["RAYON_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SAMPLE = ROOT / "data" / "sample" / "wiki_vital.parquet"
SETTINGS = {"MiniLM, 256 tokens": 256, "bge-base class (BERT WordPiece), 512 tokens": 512}
GPU_TOKENS_S = {256: 14_000_000, 512: 1_780_000}  # docs/scaling.md, H100 estimates


def _documents(tokenizer, texts: list[str], tokens: int, n: int, seed: int) -> list[str]:
    """``n`` documents of ``tokens`` tokens: shuffled sample texts joined, cut at that token."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        parts, chars = [], 0
        while chars < tokens * 8:  # English Wikipedia: about 5 characters a token
            parts.append(rng.choice(texts))
            chars += len(parts[-1]) + 2
        doc = "\n\n".join(parts)
        spans = tokenizer(doc, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        docs.append(doc[: spans[tokens - 1][1]])
    return docs


def _whole(tokenizer, docs: list[str], length: int) -> list[list[int]]:
    from pipelines.embed.tokenizer import _windows

    ids: list = [None] * len(docs)
    encoded = _windows(tokenizer, docs, length, 0, offsets=False)
    for window, sample in zip(encoded["input_ids"], encoded["overflow_to_sample_mapping"]):
        if ids[sample] is None:
            ids[sample] = window
    return ids


def _one_call_a_text(tokenizer, docs: list[str], length: int) -> list[list[int]]:
    return [_whole(tokenizer, [doc], length)[0] for doc in docs]


def _precut(tokenizer, docs: list[str], length: int) -> list[list[int]]:
    from pipelines.embed.tokenizer import tokenize_texts

    return tokenize_texts(tokenizer, docs, length)[0]


def _rate(fn, tokenizer, docs: list[str], length: int, block: int, runs: int) -> tuple[float, list]:
    """Median docs/s over ``runs``, and the ids of the last run."""
    rates = []
    for _ in range(runs):
        start = time.process_time()
        ids = [x for k in range(0, len(docs), block) for x in fn(tokenizer, docs[k : k + block], length)]
        rates.append(len(docs) / (time.process_time() - start))
    return statistics.median(rates), ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--docs-500", type=int, default=2000)
    ap.add_argument("--docs-20k", type=int, default=50)
    ap.add_argument("--block", type=int, default=1024)
    args = ap.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    import pyarrow.parquet as pq

    from bench._machine import cpu
    from pipelines.config import ModelConfig
    from pipelines.embed.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(ModelConfig().path, None, "right")
    texts = pq.read_table(SAMPLE, columns=["text"]).column("text").to_pylist()
    sizes = {500: _documents(tokenizer, texts, 500, args.docs_500, 0)}
    sizes[20_000] = _documents(tokenizer, texts, 20_000, args.docs_20k, 1)
    print(f"{cpu()}, one core (affinity), TOKENIZERS_PARALLELISM=false, RAYON_NUM_THREADS=1; blocks of {args.block}")
    print(f"CPU seconds (process time), median of {args.runs} runs\n")
    header = f"{'setting':<46}{'doc tokens':>11}{'path':>24}{'docs/s':>10}{'doc tok/s':>12}{'kept tok/s':>12}"
    print(header)
    cores = []
    for name, limit in SETTINGS.items():
        for tokens, docs in sizes.items():
            block = args.block if tokens == 500 else max(1, args.block // 40)
            reference = None
            for label, fn in (("whole", _whole), ("whole, one call a text", _one_call_a_text), ("pre-cut", _precut)):
                if fn is _one_call_a_text and tokens != 500:
                    continue
                rate, ids = _rate(fn, tokenizer, docs, limit, block, args.runs)
                reference = reference or ids
                assert ids == reference, f"{label} differs from the whole texts' tokens"
                kept = statistics.mean(len(x) for x in ids)
                print(f"{name:<46}{tokens:>11,}{label:>24}{rate:>10,.0f}{rate * tokens:>12,.0f}{rate * kept:>12,.0f}")
            cores.append((name, tokens, GPU_TOKENS_S[limit] / kept / rate))
    print("\nCPU cores to feed one GPU (tokenizing only; GPU tokens/s estimated in docs/scaling.md):")
    for name, tokens, n in cores:
        print(f"  {name}, {tokens:,}-token documents: {n:,.1f}")


if __name__ == "__main__":
    main()
