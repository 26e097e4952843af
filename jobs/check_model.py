"""Check a model before indexing with it: the chain this project reads from it, and its vectors
beside sentence-transformers' (cosine per text; exit 1 below 0.9999).

    embedpipe check-model /models/bge-small-en-v1.5
    python -m jobs.check_model packaged:all-MiniLM-L6-v2 --texts my_texts.txt

docs/models.md says how to read the output.
"""

from __future__ import annotations

import argparse
import sys

from jobs.args import fail


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="embedpipe check-model", description=__doc__.split("\n")[0])
    p.add_argument("path", help="model directory, s3:// prefix, hub id or packaged:all-MiniLM-L6-v2")
    p.add_argument("--revision", help="hub revision (commit, tag, branch)")
    p.add_argument("--texts", metavar="FILE", help="one text per line (default: 8 built-in texts, several languages)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        from pipelines.embed.check_model import DEFAULT_TEXTS, check_model

        texts = DEFAULT_TEXTS
        if args.texts:
            with open(args.texts, encoding="utf-8") as fh:
                texts = [line.rstrip("\n") for line in fh if line.strip()]
            if not texts:
                raise ValueError(f"--texts {args.texts}: no non-empty line")
        result = check_model(args.path, texts, args.revision)
        print(result.format())
        return 0 if result.ok else 1
    except Exception as exc:  # noqa: BLE001
        return fail(exc)


if __name__ == "__main__":
    sys.exit(main())
