"""The job's counters and histograms on a Ray head's Prometheus endpoint, tagged with the run id."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from helpers.corpora import two_files_with_bad_rows
from helpers.ray_head import LocalRayHead

ROOT = Path(__file__).resolve().parents[2]


def _samples(text: str, name: str, run_id: str) -> dict[str, float]:
    """``{labels: value}`` of metric ``name`` for ``run_id`` in Prometheus' text format."""
    out = {}
    for line in text.splitlines():
        match = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if match and f'run_id="{run_id}"' in match.group(1):
            out[match.group(1)] = float(match.group(2))
    return out


def _value(text: str, name: str, run_id: str, **labels: str) -> float:
    hits = [v for k, v in _samples(text, name, run_id).items() if all(f'{a}="{b}"' in k for a, b in labels.items())]
    return sum(hits) if hits else float("nan")


def test_the_jobs_counters_reach_the_heads_metrics_endpoint(sample_table, tiny_bert_dir, tmp_path):
    """The counters, not the vectors: the tiny model (32 dimensions) embeds the rows."""
    corpus = two_files_with_bad_rows(sample_table, tmp_path / "corpus", 60, 30)

    head = LocalRayHead(num_cpus=2, env={"RAY_metrics_report_interval_ms": "1000"})
    try:
        summary_path = tmp_path / "summary.json"
        env = {**head.env, "RAY_ADDRESS": f"127.0.0.1:{head.gcs_port}", "HF_HUB_OFFLINE": "1"}
        cmd = [sys.executable, "-m", "jobs.index", "--summary-json", str(summary_path)]
        for item in (
            f"source.path={corpus}",
            f"sink.uri={tmp_path / 'db'}",
            "sink.checkpoint_rows=1",
            f"model.path={tiny_bert_dir}",
            "embed.dimension=32",
        ):
            cmd += ["--set", item]
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        summary = json.loads(summary_path.read_text())
        run_id = summary["run_id"]

        # The driver has exited; its last report must still be on the endpoint (Ray flushes at exit).
        deadline, text = time.time() + 60, ""
        while time.time() < deadline:
            with urllib.request.urlopen(head.metrics_url, timeout=10) as resp:
                text = resp.read().decode()
            if _value(text, "ray_embedpipe_documents_read_total", run_id) == 62:
                break
            time.sleep(0.5)
        read = _value(text, "ray_embedpipe_documents_read_total", run_id)
        assert read == summary["rows_read"] == 62, [line for line in text.splitlines() if "embedpipe" in line][:40]
        assert _value(text, "ray_embedpipe_rows_embedded_total", run_id) == summary["rows_written"] == 60
        assert _value(text, "ray_embedpipe_documents_rejected_total", run_id, reason="null_text") == 1
        assert _value(text, "ray_embedpipe_documents_rejected_total", run_id, reason="empty_text") == 1
        assert _value(text, "ray_embedpipe_tokens_total", run_id) == summary["tokens"] > 0
        names = " ".join(sorted({line.split("{")[0] for line in text.splitlines() if line.startswith("ray_embedpipe")}))
        assert _value(text, "ray_embedpipe_rows_expected_total", run_id) == 62, names
        checkpoints = summary["checkpoints"]
        assert checkpoints >= 1 and _value(text, "ray_embedpipe_checkpoints_total", run_id) == checkpoints
        assert _value(text, "ray_embedpipe_commit_seconds_count", run_id) == checkpoints
        assert _value(text, "ray_embedpipe_bytes_written_total", run_id) > 60 * 32 * 4  # the vectors at least
        # Recorded in the encoder actors: each counts itself once, and each block it embedded.
        assert _value(text, "ray_embedpipe_encoder_actors_started_total", run_id) == len(summary["encoders"]) >= 1
        assert _value(text, "ray_embedpipe_encode_batch_seconds_count", run_id) >= 1
    finally:
        head.stop()
