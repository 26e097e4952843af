"""Stages on single batches, without Ray: validation reasons, tokenization, the plan's resources."""

import pyarrow as pa
import pytest

from connectors import columns as C
from pipelines.config import load_config
from pipelines.embed.tokenizer import load_tokenizer, tokenize_texts
from pipelines.run.plan import ENCODER_ACTOR_OPTIONS, embedding_stages
from pipelines.run.stages.validate import ValidateStage


def test_validate_marks_reasons_and_keeps_every_row():
    batch = pa.table({"id": ["a", "b", "c", None, "e"], "text": ["ok", None, " \t", "x", "fine"], "path": ["f1"] * 5})
    out = ValidateStage("id", "text")(batch)
    assert out.num_rows == 5
    assert out.column(C.REJECT).to_pylist() == [None, "null_text", "empty_text", "null_id", None]
    assert out.column(C.FILE).to_pylist() == ["f1"] * 5
    assert "path" not in out.column_names


def test_validate_rejects_non_string_text_column():
    out = ValidateStage("id", "text")(pa.table({"id": [1, 2], "text": [3, 4]}))
    assert out.column(C.REJECT).to_pylist() == ["not_a_string", "not_a_string"]
    assert out.schema.field("text").type == pa.string()


def test_tokenize_truncates_at_limit_and_reports_it():
    tokenizer = load_tokenizer("packaged:all-MiniLM-L6-v2", None, "right")
    ids, truncated = tokenize_texts(tokenizer, ["short text", "word " * 1000, ""], max_tokens=32)
    assert truncated == [False, True, False]
    assert len(ids[1]) == 32 and ids[1][0] == tokenizer.cls_token_id and ids[1][-1] == tokenizer.sep_token_id
    assert ids[0] == tokenizer("short text")["input_ids"]


def test_plan_takes_actor_resources_from_config(ray_cluster):
    from helpers.settled import settled

    config = settled(
        load_config(
            overrides=[
                "compute.actors=2",
                "compute.max_actors=4",
                "compute.gpus_per_actor=1",
                "compute.cpus_per_actor=0.5",
            ]
        )
    )
    stages = embedding_stages(config, max_tokens=256, dimension=384)
    assert [s.name for s in stages] == ["validate", "tokenize", "encode"]
    encode = stages[-1]
    assert encode.map_kwargs["num_gpus"] == 1 and encode.map_kwargs["num_cpus"] == 0.5
    pool = encode.map_kwargs["compute"]
    assert (pool.min_size, pool.max_size) == (2, 4)
    # A dead actor restarted, its batch in flight failing the stream (test_idle_encoder_death.py).
    assert {k: encode.map_kwargs[k] for k in ENCODER_ACTOR_OPTIONS} == ENCODER_ACTOR_OPTIONS
    assert encode.constructor_kwargs["threads"] is None  # GPU actors keep torch's default


@pytest.mark.parametrize("pooling, side", [("mean", "right"), ("cls", "right"), ("last", "left")])
def test_padding_side_follows_pooling(pooling, side):
    from pipelines.embed.hf_encoder import padding_side_for

    assert padding_side_for(load_config(overrides=[f"model.pooling={pooling}"]).model) == side
