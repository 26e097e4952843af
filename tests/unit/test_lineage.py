"""The typed lineage reads and writes exactly the JSON tables already hold, and keys vectors as before."""

from __future__ import annotations

import copy
import json

from connectors.lance.metadata import table_metadata
from helpers.settled import settled
from pipelines.config import ModelConfig, load_config
from pipelines.embed.precision import query_dtype
from pipelines.lineage import Lineage, check_compatible, make_lineage, query_model_config, vector_key

# A format-1 lineage as a table of before model.append_eos stores it.
STORED = {
    "created_at": "2026-11-01T00:00:00+00:00",
    "dimension": 384,
    "format": 1,
    "metric": "cosine",
    "model": {
        "backend": "hf",
        "document_prompt": "",
        "dtype": "float32",
        "fingerprint": "sha256-full:" + "cd" * 16,
        "hidden_size": 384,
        "max_tokens": 256,
        "padding_side": "auto",
        "path": "packaged:all-MiniLM-L6-v2",
        "pooling": "mean",
        "query_prompt": "",
        "revision": None,
    },
    "normalize": True,
    "source": {"id_column": "id", "metadata_columns": [], "text_column": "text"},
    "vector_dtype": "float32",
}


def test_vector_key_digests_are_the_ones_main_computed():
    """Computed on main (2026-12-07) before the lineage was typed: a changed digest would make every
    upsert re-embed every document of every table."""
    truncate = load_config(overrides=["embed.long_text=truncate"])
    chunk = load_config(overrides=["embed.long_text=chunk", "embed.chunk_overlap=32"])
    eos = copy.deepcopy(STORED)
    eos["model"]["append_eos"] = True
    for lineage in (STORED, Lineage.parse(STORED)):
        assert vector_key(lineage, truncate) == "6da41b8aec47655c4adbbf976c5201c10dd3cc82d2a0e18124b1ae460c924b4c"
    for lineage in (eos, Lineage.parse(eos)):
        assert vector_key(lineage, chunk) == "1daef711c8be80b9544688ded52f6fa3183f02e0a18c81341c706797f96764db"
    explicit = copy.deepcopy(STORED)
    explicit["model"]["append_eos"] = False  # absent meant False: the same key
    assert vector_key(explicit, truncate) == vector_key(STORED, truncate)


def test_a_stored_lineage_round_trips_key_for_key():
    lineage = Lineage.parse(STORED)
    assert lineage.to_dict() == STORED and "append_eos" not in lineage.to_dict()["model"]
    assert lineage.model.append_eos is False and lineage.normalize is True and lineage.index_type() == "none"
    assert table_metadata(lineage) == table_metadata(STORED)
    newer = {**STORED, "a_later_key": {"x": 1}, "model": {**STORED["model"], "a_later_model_key": 2}}
    assert Lineage.parse(newer).to_dict() == newer  # keys this version does not know are kept


def test_made_lineage_holds_every_key_and_updates_add_only_theirs():
    config = settled(load_config())
    made = make_lineage(config, fingerprint="sha256-full:ab", hidden_size=384, max_tokens=256, dimension=384)
    stored = made.to_dict()
    assert set(stored) == {
        "format",
        "created_at",
        "model",
        "dimension",
        "normalize",
        "vector_dtype",
        "metric",
        "source",
    }
    assert stored["model"]["append_eos"] is False and stored["model"]["revision"] is None
    assert json.loads(json.dumps(stored)) == stored
    updated = made.updated(index={"type": "ivf_pq"}, query_defaults={"nprobes": 4, "refine_factor": 2})
    assert updated.to_dict() == {
        **stored,
        "index": {"type": "ivf_pq"},
        "query_defaults": {"nprobes": 4, "refine_factor": 2},
    }
    assert updated.index_type() == "ivf_pq" and made.index is None
    check_compatible(stored, updated, "the same run")


def test_queries_take_the_model_settings_from_the_lineage():
    stored = copy.deepcopy(STORED)
    stored["model"].update(query_prompt="query: ", document_prompt="passage: ", revision="main", append_eos=True)
    m = stored["model"]
    got = query_model_config(Lineage.parse(stored), "/models/here", query_dtype("float32", "cpu"), "cpu")
    want = ModelConfig(
        path="/models/here",
        revision=m["revision"],
        backend=m["backend"],
        pooling=m["pooling"],
        max_tokens=m["max_tokens"],
        query_prompt=m["query_prompt"],
        document_prompt=m["document_prompt"],
        dtype=query_dtype(m["dtype"], "cpu"),
        padding_side=m["padding_side"],
        device="cpu",
        append_eos=True,
        include_prompt=True,  # what a lineage without the keys means: nothing is left "auto" for a query
        dense=False,
    )
    assert got == want
    old = query_model_config(Lineage.parse(STORED), "p", "float32", "cpu")
    assert old.append_eos is False and old.revision is None and old.padding_side == "auto"
