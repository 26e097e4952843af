import pytest

from pipelines.config import ConfigError, PipelineConfig, load_config, parse_overrides


def test_defaults_are_valid_and_point_at_packaged_model_and_sample():
    config = load_config()
    assert config.model.path == "packaged:all-MiniLM-L6-v2"
    assert config.source.path.endswith("data/sample/wiki_vital.parquet")
    assert config.sink.uri == "out/lancedb"
    assert (config.index.type, config.index.num_bits) == ("ivf_rq", "auto")


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("compute:\n  actors: 3\nsink:\n  table: docs\n")
    config = load_config(path, ["compute.actors=2", "embed.dimension=128", "model.query_prompt=query: "])
    assert config.compute.actors == 2
    assert config.sink.table == "docs"
    assert config.embed.dimension == 128
    assert config.model.query_prompt == "query: "


@pytest.mark.parametrize(
    "override, key",
    [
        (["compute.actorz=2"], "compute.actorz"),
        (["sourc.path=x"], "sourc"),
        (["compute.actors=0"], "compute.actors"),
        (["model.pooling=maximum"], "model.pooling"),
        (["model.device=tpu"], "model.device"),
        (["sink.mode=merge"], "sink.mode"),
        (["index.num_partitions=-3"], "index.num_partitions"),
        (["sink.table=a/b"], "sink.table"),
    ],
)
def test_bad_keys_and_values_are_named(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=override)
    assert key in str(err.value)


def test_unknown_key_in_file_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  pooling: mean\n  poolling: cls\n")
    with pytest.raises(ConfigError, match=r"model\.poolling: unknown key"):
        load_config(path)


def test_sub_vectors_must_divide_dimension():
    with pytest.raises(ConfigError, match="num_sub_vectors=16 must divide embed.dimension=100"):
        load_config(overrides=["embed.dimension=100", "index.type=ivf_pq", "index.num_sub_vectors=16"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["index.num_bits=2", "index.type=ivf_pq"], "index.num_bits applies to index.type=ivf_rq only, not ivf_pq"),
        (["index.num_sub_vectors=16"], "index.num_sub_vectors applies to index.type=ivf_pq only, not ivf_rq"),
        (["index.num_bits=9"], "must be 1 to 8"),
        (["embed.dimension=100"], "ivf_rq needs a dimension divisible by 8, this one is 100"),
    ],
)
def test_index_options_that_do_not_apply_are_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=overrides)


def test_max_actors_not_below_actors():
    with pytest.raises(ConfigError, match="max_actors"):
        load_config(overrides=["compute.actors=4", "compute.max_actors=2"])


def test_parse_overrides_nesting_and_types():
    assert parse_overrides(["a.b=1", "a.c=x", "d=true", "e=[1, 2]"]) == {
        "a": {"b": 1, "c": "x"},
        "d": True,
        "e": [1, 2],
    }
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["novalue"])


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_config_round_trips_through_dump():
    config = load_config(overrides=["compute.actors=2"])
    assert PipelineConfig.model_validate(config.model_dump()) == config


def test_a_dumped_config_loads_again():
    """Jobs that derive configs (jobs.evaluate) dump and reload them: every default must validate."""
    config = load_config(overrides=["sink.mode=upsert", "sink.delete_missing=true", "sink.max_delete_fraction=0.3"])
    assert load_config(data=config.model_dump()) == config
    assert load_config(data=load_config().model_dump()) == load_config()


def test_the_service_config_names_bad_keys():
    from jobs.serve import app
    from pipelines.config import ServiceConfig

    assert ServiceConfig.load({"uri": "db", "table": "wiki"}).max_batch_size == 32
    both = r"invalid service config: (?=.*tabel: unknown key)(?=.*max_k: Input should be greater)"
    with pytest.raises(ConfigError, match=both):
        ServiceConfig.load({"tabel": "wiki", "max_k": 0})
    with pytest.raises(ConfigError, match="max_batch_size"):
        app({"max_batch_size": 0})


@pytest.mark.parametrize(
    "name",
    ["run_id", "score", "vector", "content_hash", "source_file", "doc_id", "chunk", "path", "query_index"],
)
@pytest.mark.parametrize(
    "where", ["source.metadata_columns=[title, {}]", "source.id_column={}", "source.text_column={}"]
)
def test_reserved_column_names_are_refused_before_any_work(name, where):
    """A column the table adds (run_id, vector, ...), a search returns (score, query_index) or Ray Data
    adds (path) cannot also come from the source: the writer failed after all the embedding, and a
    metadata column named score made the query service answer two of them."""
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[where.format(name)])
    message = str(err.value)
    assert f"'{name}' is reserved" in message
    key = where.split("=")[0]
    assert f"{key}: " in message and "rename it in the source" in message


@pytest.mark.parametrize("name", ["_distance", "_score", "_relevance_score", "_rowid", "_rowaddr"])
def test_lance_result_columns_are_refused(name):
    with pytest.raises(ConfigError, match=f"'{name}' is reserved"):
        load_config(overrides=[f"source.metadata_columns=[title, {name}]"])


def test_every_reserved_name_says_why():
    from pipelines.config import RESERVED_COLUMNS

    assert {"run_id", "score", "vector", "content_hash", "source_file", "doc_id", "chunk", "path"} <= set(
        RESERVED_COLUMNS
    )
    with pytest.raises(ConfigError, match="score.*search"):
        load_config(overrides=["source.metadata_columns=[score]"])
    with pytest.raises(ConfigError, match="run_id.*table"):
        load_config(overrides=["source.metadata_columns=[run_id]"])


@pytest.mark.parametrize("long_text", ["truncate", "chunk"])
def test_every_column_the_runner_adds_is_reserved(long_text):
    """The table's schema (pipelines/run/preflight.py) holds the source's columns and reserved names only:
    a column the runner starts writing must join RESERVED (or start with '_')."""
    from types import SimpleNamespace

    import pyarrow as pa

    from connectors.parquet_source import PATH_COLUMN
    from pipelines.config import RESERVED
    from pipelines.run.preflight import _table_schema

    assert PATH_COLUMN in RESERVED
    config = load_config(overrides=["source.metadata_columns=[title]", f"embed.long_text={long_text}"])
    source = SimpleNamespace(schema=pa.schema([("id", pa.string()), ("text", pa.string()), ("title", pa.string())]))
    added = set(_table_schema(config, source, 8, {}).names) - {"id", "text", "title"}
    assert added and added <= set(RESERVED)


def _numeric_keys(model=PipelineConfig, prefix=""):
    """Every numeric option of every section: (key, takes_floats)."""
    import typing

    from pydantic import BaseModel

    def kinds(annotation):
        args = typing.get_args(annotation)
        return set().union(*map(kinds, args)) if args else {annotation}

    keys = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += _numeric_keys(annotation, f"{prefix}{name}.")
        elif bool not in kinds(annotation) and kinds(annotation) & {int, float}:
            keys.append((f"{prefix}{name}", float in kinds(annotation)))
    return keys


NUMERIC_KEYS = _numeric_keys()


def test_the_numeric_keys_are_found():
    keys = dict(NUMERIC_KEYS)
    assert {"compute.actors", "index.nprobes", "index.refine_factor", "sink.lease_timeout_s"} <= set(keys)
    assert keys["compute.cpus_per_actor"] and not keys["compute.actors"]
    assert "model.append_eos" not in keys  # Union[bool, "auto"]: a boolean is its value


@pytest.mark.parametrize("key", [key for key, _ in NUMERIC_KEYS])
@pytest.mark.parametrize("value", ["yes", "true", "false", "no", "on"])
def test_booleans_are_not_numbers(key, value):
    """YAML reads yes/true/on as a boolean; pydantic's lax mode took it as 1 (compute.actors=true ran one actor)."""
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[f"{key}={value}"])
    assert f"{key}: " in str(err.value) and "boolean" in str(err.value)


@pytest.mark.parametrize("key", [key for key, takes_floats in NUMERIC_KEYS if not takes_floats])
def test_whole_number_keys_refuse_fractions(key):
    with pytest.raises(ConfigError, match=f"{key}: "):
        load_config(overrides=[f"{key}=2.5"])


def test_booleans_in_a_yaml_file_are_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("compute:\n  actors: true\nindex:\n  nprobes: yes\n  workers: no\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    for key in ("compute.actors", "index.nprobes", "index.workers"):
        assert f"{key}: " in str(err.value)


def test_numbers_still_load():
    config = load_config(
        overrides=[
            "compute.cpus_per_actor=2",
            "compute.gpus_per_actor=0.5",
            "index.nprobes=16",
            "sink.lease_timeout_s=30",
        ]
    )
    assert config.compute.cpus_per_actor == 2.0 and isinstance(config.compute.cpus_per_actor, float)
    assert config.index.nprobes == 16 and config.sink.lease_timeout_s == 30
    assert load_config(overrides=["model.append_eos=true"]).model.append_eos is True


@pytest.mark.parametrize("value, bound", [("5", ">= 10"), ("0", ">= 10"), ("172800", "<= 86400")])
def test_the_lease_timeout_has_bounds(value, bound):
    with pytest.raises(ConfigError, match=f"sink.lease_timeout_s: .*{bound}"):
        load_config(overrides=[f"sink.lease_timeout_s={value}"])


def test_a_metadata_column_named_twice_is_refused():
    """The table's schema would hold the column twice: the writer failed after the embedding work."""
    with pytest.raises(ConfigError, match="source: .*metadata_columns names 'title' more than once"):
        load_config(overrides=["source.metadata_columns=[title, date, title]"])


@pytest.mark.parametrize("key", [key for key, takes_floats in NUMERIC_KEYS if takes_floats])
@pytest.mark.parametrize("value", [".inf", ".nan"])
def test_float_keys_refuse_infinity_and_nan(key, value):
    with pytest.raises(ConfigError, match=f"{key}: .*finite"):
        load_config(overrides=[f"{key}={value}"])


def test_the_service_config_takes_no_boolean_for_a_number():
    from pipelines.config import ServiceConfig

    with pytest.raises(ConfigError, match="max_k: .*boolean"):
        ServiceConfig.load({"max_k": True})
