"""``jobs.index --dry-run``: files and rows from the footers, a sample through the run's own stages, a
timed warm-up of the encoder, the estimate and the table's size; and nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.corpora import two_files_with_bad_rows
from helpers.job_main import run_job_main
from jobs.index import main as index_main

ROOT = Path(__file__).resolve().parents[2]


def _dry_run(ray_cluster, tmp_path: Path, *overrides: str, in_process: bool = False) -> tuple:
    """``python -m jobs.index --dry-run`` in a process of its own, or its ``main`` in this one on the
    session's Ray (helpers/job_main.py: the same output and exit code, without a Python start)."""
    args = ["--dry-run", "--summary-json", str(tmp_path / "plan.json")]
    for item in [f"sink.uri={tmp_path / 'db'}", *overrides]:
        args += ["--set", item]
    if in_process:
        done = run_job_main(index_main, args)
    else:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": ray_cluster.address_info["address"]}
        done = subprocess.run(
            [sys.executable, "-m", "jobs.index", *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600
        )
    assert done.returncode == 0, done.stderr[-3000:]
    return done, json.loads((tmp_path / "plan.json").read_text())


def test_dry_run_measures_and_writes_nothing(ray_cluster, sample_table, tmp_path):
    corpus = two_files_with_bad_rows(sample_table, tmp_path / "corpus", 400, 300)

    done, plan = _dry_run(ray_cluster, tmp_path, f"source.path={corpus}", "model.max_tokens=128")
    assert plan["files"] == 2 and plan["rows"] == 402  # from the footers: every row, not the sample
    assert plan["sample_rows"] == 128 + 102  # up to 256 / 2 from the first row group of each file
    assert 60 < plan["tokens_per_doc"] <= 128  # Wikipedia lead sections, cut at 128 tokens
    assert 0 < plan["truncated_share"] < 1 and plan["rows_per_doc"] == 1
    assert plan["rejected_share"] == pytest.approx(2 / 230)  # b.parquet's two bad rows
    assert plan["device"] == "cpu" and plan["actor_docs_per_s"] > 0
    expected = 402 * (1 - plan["rejected_share"]) / plan["actor_docs_per_s"]
    assert abs(plan["estimated_embed_s"] - expected) < 1e-6 * expected
    assert plan["table_rows"] == round(402 * (1 - 2 / 230))  # the sample's reject share, on every row
    assert plan["table_bytes"] > plan["table_rows"] * 384 * 4  # vectors, texts and the job's columns
    assert "dry run (nothing was written)" in done.stdout and "estimate " in done.stdout
    # The model's chain as the run would settle it, and where each setting came from.
    assert "model        Transformer -> Pooling(mean) -> Normalize: 384 dims, 384 stored" in done.stdout
    assert "pooling mean, include_prompt true (model's 1_Pooling/config.json)" in done.stdout
    assert plan["model"][0].startswith("Transformer -> Pooling(mean)")
    assert not (tmp_path / "db").exists()  # no table, no run log, no lease

    # Chunked: a document becomes several rows; the table's rows follow (the job's main in this process).
    _, chunked = _dry_run(
        ray_cluster, tmp_path, f"source.path={corpus}", "embed.long_text=chunk", "model.max_tokens=64", in_process=True
    )
    assert chunked["rows_per_doc"] > 1.5 and chunked["truncated_share"] == 0
    assert chunked["table_rows"] == round(402 * (1 - 2 / 230) * chunked["rows_per_doc"])
    assert not (tmp_path / "db").exists()
