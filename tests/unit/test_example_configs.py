"""Every file in jobs/configs/ is a valid config, and each example says what it claims to."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.config import load_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "jobs" / "configs").glob("*.yaml"))


def test_the_three_examples_exist():
    assert {"demo.yaml", "s3_production.yaml", "gpu.yaml"} <= {p.name for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_file_validates_and_keeps_no_secrets(path):
    config = load_config(path)
    text = path.read_text()
    assert not re.search(r"(?i)aws_secret|secret_access_key|AKIA[0-9A-Z]{16}|password", text)
    # Every key written in the file is one the schema has (load_config would fail otherwise), and the
    # file is a plain mapping of sections.
    assert set(yaml.safe_load(text)) <= set(type(config).model_fields)


def test_demo_runs_locally_on_the_bundled_sample():
    config = load_config(ROOT / "jobs" / "configs" / "demo.yaml")
    assert config.source.path.endswith("data/sample/wiki_vital.parquet") and Path(config.source.path).exists()
    assert config.model.path == "packaged:all-MiniLM-L6-v2" and config.compute.gpus_per_actor == 0


def test_s3_production_reads_and_writes_s3_and_upserts():
    config = load_config(ROOT / "jobs" / "configs" / "s3_production.yaml")
    assert config.source.path.startswith("s3://") and config.sink.uri.startswith("s3://")
    assert config.sink.mode == "upsert" and config.run.id is None  # run ids come per run (the DAG: daily-<ds>)
    assert "date" in config.source.metadata_columns  # from the date=YYYY-MM-DD/ partition folders
    assert config.compute.gpus_per_actor >= 1 and config.model.dtype == "bfloat16"
    # The daily DAG's default config is this file.
    assert "jobs/configs/s3_production.yaml" in (ROOT / "infra" / "airflow" / "dags" / "embedpipe_daily.py").read_text()


def test_gpu_example_puts_each_actor_on_a_gpu_in_bfloat16():
    config = load_config(ROOT / "jobs" / "configs" / "gpu.yaml")
    assert config.compute.gpus_per_actor == 1 and config.compute.actors >= 1
    assert config.model.dtype == "bfloat16" and config.model.device == "auto"
    assert config.model.pooling == "last" and config.model.query_prompt.endswith("Query: ")
    from pipelines.vector_index.params import derive_index_params

    params = derive_index_params(1_000_000, config.embed.dimension, config.index)  # a full-size table
    assert (params.num_partitions, params.num_sub_vectors) == (1000, 128)


def test_print_config_accepts_each_file():
    for path in CONFIGS:
        done = subprocess.run([sys.executable, "-m", "jobs.index", "--config", str(path), "--print-config"],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{path.name}: {done.stderr}"
        assert yaml.safe_load(done.stdout)["sink"]["table"] == load_config(path).sink.table
