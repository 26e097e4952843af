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
        (["model.pooling=max"], "model.pooling"),
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
