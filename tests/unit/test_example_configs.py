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
# Every example, each with the test below that checks what its header comment claims.
EXAMPLES = {"demo.yaml", "s3_production.yaml", "gpu.yaml", "qwen3_vllm.yaml"}


def test_every_file_in_jobs_configs_is_an_example_checked_here():
    names = {p.name for p in CONFIGS}
    assert names, "jobs/configs/ holds no *.yaml"
    assert names == EXAMPLES, (
        f"not checked here: {sorted(names - EXAMPLES)}; gone: {sorted(EXAMPLES - names)} "
        "(add a test of what the new example claims, and its name to EXAMPLES)"
    )


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_file_validates_keeps_no_secrets_and_prints(path):
    config = load_config(path)
    text = path.read_text()
    assert not re.search(r"(?i)aws_secret|secret_access_key|AKIA[0-9A-Z]{16}|password", text)
    # Every key written in the file is one the schema has (load_config would fail otherwise), and the
    # file is a plain mapping of sections.
    assert set(yaml.safe_load(text)) <= set(type(config).model_fields)
    # The job's own command line accepts it (`--print-config` exits before any work or Ray).
    done = subprocess.run(
        [sys.executable, "-m", "jobs.index", "--config", str(path), "--print-config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{path.name}: {done.stderr}"
    assert yaml.safe_load(done.stdout) == yaml.safe_load(yaml.safe_dump(config.model_dump()))


def test_demo_runs_locally_on_the_bundled_sample():
    config = load_config(ROOT / "jobs" / "configs" / "demo.yaml")
    assert config.source.path.endswith("data/sample/wiki_vital.parquet") and Path(config.source.path).exists()
    assert config.model.path == "packaged:all-MiniLM-L6-v2" and config.compute.gpus_per_actor == 0


def test_s3_production_reads_and_writes_s3_and_upserts():
    config = load_config(ROOT / "jobs" / "configs" / "s3_production.yaml")
    assert config.source.path.startswith("s3://") and config.sink.uri.startswith("s3://")
    assert config.sink.mode == "upsert" and config.run.id is None  # run ids come per run (the DAG: daily-<ds>)
    assert "date" in config.source.metadata_columns  # from the date=YYYY-MM-DD/ partition folders
    assert config.compute.gpus_per_actor >= 1 and _gpu_dtype(config) == "bfloat16"
    # The daily DAG's default config is this file.
    assert "jobs/configs/s3_production.yaml" in (ROOT / "infra" / "airflow" / "dags" / "embedpipe_daily.py").read_text()


def test_gpu_example_puts_each_actor_on_a_gpu_in_bfloat16():
    config = load_config(ROOT / "jobs" / "configs" / "gpu.yaml")
    assert config.compute.gpus_per_actor == 1 and config.compute.actors >= 1
    assert _gpu_dtype(config) == "bfloat16" and config.model.device == "auto"
    assert config.model.pooling == "last" and config.model.query_prompt.endswith("Query: ")
    from pipelines.vector_index.params import derive_index_params

    params = derive_index_params(1_000_000, config.embed.dimension, config.index)  # a full-size table
    assert (params.type, params.num_partitions, params.num_bits) == ("ivf_rq", 1000, 4)


def test_qwen3_vllm_runs_the_decoder_on_vllm_one_gpu_per_actor_for_the_cluster_files():
    path = ROOT / "jobs" / "configs" / "qwen3_vllm.yaml"
    config = load_config(path)
    assert config.model.backend == "vllm" and config.model.path == "Qwen/Qwen3-Embedding-0.6B"
    assert config.model.pooling == "last" and config.embed.dimension == 1024 and _gpu_dtype(config) == "bfloat16"
    # The instruction goes on queries only.
    assert config.model.query_prompt.startswith("Instruct: ") and config.model.document_prompt == ""
    assert config.compute.gpus_per_actor == 1 == config.model.vllm.tensor_parallel_size
    assert config.compute.cpus_per_actor == 1  # the one logical CPU a gpu_worker node advertises
    assert config.compute.max_actors >= config.compute.actors
    # source.path and sink.uri come from the command line (--set), as the cluster files give them.
    written = yaml.safe_load(path.read_text())
    assert "source" not in written and "uri" not in written["sink"]
    for user in (ROOT / "ray_cluster.yaml", ROOT / "infra" / "rayjob.yaml"):
        assert "--config jobs/configs/qwen3_vllm.yaml" in user.read_text(), user.name


def _gpu_dtype(config) -> str:
    """The dtype the GPU actors run in (model.dtype auto resolves on the planned device)."""
    from pipelines.embed.precision import planned_device, resolve_dtype

    return resolve_dtype(config.model.dtype, planned_device(config.model.device, config.compute.gpus_per_actor))[0]
