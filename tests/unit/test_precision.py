"""``model.dtype: auto``: the rule per device and CPU, and what bfloat16 costs in the space."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.config import load_config
from pipelines.embed.precision import cpu_has_native_bf16, planned_device, query_dtype, resolve_dtype

XEON_FLAGS = frozenset({"avx512f", "avx512_bf16", "amx_tile"})
SAPPHIRE_FLAGS = frozenset({"avx512f", "amx_bf16", "amx_tile"})
EPYC_FLAGS = frozenset({"avx", "avx2", "fma"})


def test_auto_is_the_default():
    assert load_config(overrides=[]).model.dtype == "auto"


@pytest.mark.parametrize(
    "device, flags, dtype, why",
    [
        ("cuda", EPYC_FLAGS, "bfloat16", "CUDA"),
        ("cpu", XEON_FLAGS, "bfloat16", "avx512_bf16"),
        ("cpu", SAPPHIRE_FLAGS, "bfloat16", "amx_bf16"),
        ("cpu", EPYC_FLAGS, "float32", "no native bf16"),
        ("cpu", frozenset(), "float32", "no native bf16"),
    ],
)
def test_auto_picks_by_device_and_cpu_flags(device, flags, dtype, why):
    got, reason = resolve_dtype("auto", device, flags)
    assert got == dtype and why in reason and reason.startswith("auto: ")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_a_set_dtype_is_kept_on_any_hardware(dtype):
    assert resolve_dtype(dtype, "cpu", EPYC_FLAGS) == (dtype, "model.dtype set")
    assert resolve_dtype(dtype, "cuda", XEON_FLAGS)[0] == dtype


@pytest.mark.parametrize(
    "device, gpus, planned",
    [
        ("auto", 0, "cpu"),
        ("auto", 1, "cuda"),
        ("auto", 0.5, "cuda"),
        ("cpu", 1, "cpu"),
        ("cuda", 0, "cuda"),
        ("cuda:1", 0, "cuda"),
    ],
)
def test_the_driver_plans_the_actors_device(device, gpus, planned):
    assert planned_device(device, gpus) == planned


def test_queries_on_a_cpu_without_bf16_run_in_float32():
    assert query_dtype("bfloat16", "cpu", EPYC_FLAGS) == "float32"
    assert query_dtype("bfloat16", "cpu", XEON_FLAGS) == "bfloat16"
    assert query_dtype("bfloat16", "cuda", EPYC_FLAGS) == "bfloat16"
    assert query_dtype("float32", "cpu", XEON_FLAGS) == "float32"
    assert query_dtype("float16", "cpu", EPYC_FLAGS) == "float16"


def test_this_machine_is_read_from_proc_cpuinfo():
    flags = open("/proc/cpuinfo").read()
    assert cpu_has_native_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)


def test_bfloat16_vectors_are_within_cosine_0999_of_float32(minilm_dir, sample_table):
    """Where auto picks bfloat16, the vectors stay in float32's space: cosine >= 0.999 per document
    (measured here whatever this CPU is: emulated bf16 is slow, not different)."""
    from pipelines.config import ModelConfig
    from pipelines.embed.hf_encoder import HFEncoder
    from pipelines.embed.tokenizer import load_tokenizer

    texts = [t for t in sample_table.column("text").to_pylist() if t and t.strip()][:24]
    tokenizer = load_tokenizer(str(minilm_dir), None, "right")
    ids = [tokenizer(t, truncation=True, max_length=256)["input_ids"] for t in texts]
    vectors = {}
    for dtype in ("float32", "bfloat16"):
        encoder = HFEncoder(ModelConfig(path=str(minilm_dir), dtype=dtype, device="cpu"), threads=1)
        vectors[dtype] = np.asarray(encoder.embed(ids), dtype=np.float64)
    a, b = vectors["float32"], vectors["bfloat16"]
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert len(cosine) == len(texts) and cosine.min() >= 0.999, cosine.min()


def test_append_and_upsert_keep_the_dtype_the_table_was_embedded_in():
    """The rule tests/integration/test_end_to_end.py (slow) checks through a real upsert."""
    from pipelines.run.preflight import _with_dtype

    auto = load_config(overrides=["model.device=cpu"])
    table = {"model": {"dtype": "bfloat16"}}
    config, why = _with_dtype(auto, table)
    assert config.model.dtype == "bfloat16" and "the dtype table 'documents' was embedded in" in why
    config, _ = _with_dtype(load_config(overrides=["model.device=cpu", "model.dtype=float32"]), table)
    assert config.model.dtype == "float32"  # a dtype set in the config is used as set
    config, why = _with_dtype(auto, None)  # a new table: the hardware's rule
    assert (config.model.dtype, why) == resolve_dtype("auto", "cpu")
