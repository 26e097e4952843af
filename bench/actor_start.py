"""Where an encoder actor's start goes: imports, model, tokenizer, first batch, each in a fresh process.

    python bench/actor_start.py [--runs 3] [--models tiny,minilm] [--no-ray]

Every job run starts its encoder actors in new Ray worker processes (Ray Data makes an execution's
actors and ends them with it; an actor never takes over an idle task worker), so each run pays what
this measures. A child process does what the actor does, in its order, timing each step:

- ``ray + ray.data``: what a Ray Data worker has imported before our code runs (not ours to cut);
- ``torch``: imported by the encode stage's module (``pipelines.embed.head``); the model needs it;
- ``stage module, rest``: the rest of ``pipelines.run.stages.encode`` (config, numpy, pyarrow);
- ``transformers``: ``import transformers`` and its model registry (``AutoConfig``);
- the modelling code ``from_pretrained`` imports (``modeling_bert`` -> ``modeling_utils``), split by
  importing first, in this order, what it pulls in that an encoder never uses: ``torch._dynamo``
  (``masking_utils``), ``torch.distributed.tensor`` (``core_model_loading``; with it sympy), and
  ``scipy.optimize`` (``loss_for_object_detection``, imported because scipy is installed);
- the ``EncodeStage`` constructor, split into ``from_pretrained`` (weights), the tokenizer and the rest;
- the first and second call on a 64-row block of the sample's texts.

With Ray (default), one more child line: the same steps inside a plain Ray actor on a local Ray, plus
the time from ``.remote()`` to the actor's first line (a new worker process starting). Medians over
``--runs``; the CPU is printed with them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

MODELS = {"minilm": "packaged:all-MiniLM-L6-v2", "tiny": None}  # tiny: built once per bench run


def _steps(model_path: str) -> dict:
    """The actor's start, step by step, in this (fresh) process; seconds per step, in order."""
    out: dict = {}  # name -> [wall s, CPU s of this process]
    clock = [time.perf_counter(), time.process_time()]

    def mark(name: str) -> None:
        now = [time.perf_counter(), time.process_time()]
        out[name] = [round(now[0] - clock[0], 3), round(now[1] - clock[1], 3)]
        clock[:] = now

    import ray
    import ray.data  # noqa: F401

    mark("ray + ray.data")
    import torch  # noqa: F401

    mark("torch")
    import pipelines.run.stages.encode as encode

    mark("stage module, rest")
    import transformers

    transformers.AutoConfig  # noqa: B018 - the model registry loads on first use
    mark("transformers")
    import torch._dynamo  # noqa: F401
    import torch.distributed.tensor  # noqa: F401

    mark("modelling: torch._dynamo, distributed")
    try:
        import scipy.optimize  # noqa: F401
    except ImportError:
        pass
    mark("modelling: scipy.optimize")
    from connectors.model_store import resolve_model_dir

    config = transformers.AutoConfig.from_pretrained(str(resolve_model_dir(model_path)))
    transformers.AutoModel._model_mapping[type(config)]  # imports the model's modelling module
    mark("modelling: the rest")

    import pipelines.embed.hf_encoder as hf_encoder
    import pipelines.embed.tokenizer as tokenizer

    timed: dict = {}

    def timing(fn, name):
        def wrapper(*args, **kwargs):
            started = [time.perf_counter(), time.process_time()]
            try:
                return fn(*args, **kwargs)
            finally:
                timed[name] = [time.perf_counter() - started[0], time.process_time() - started[1]]

        return wrapper

    hf_encoder.load_transformer = timing(hf_encoder.load_transformer, "from_pretrained")
    tokenizer.load_tokenizer = timing(tokenizer.load_tokenizer, "tokenizer")
    from pipelines.config import ModelConfig

    model = ModelConfig(path=model_path)
    stage = encode.EncodeStage(model, dimension=int(config.hidden_size), normalize=True, batch_tokens="auto")
    mark("constructor: rest")
    rest = out.pop("constructor: rest")
    for name in ("from_pretrained", "tokenizer"):
        out[f"constructor: {name}"] = [round(x, 3) for x in timed[name]]
    out["constructor: rest"] = [round(r - a - b, 3) for r, a, b in zip(rest, *timed.values())]
    block = _block(stage.encoder.tokenizer)
    clock[:] = [time.perf_counter(), time.process_time()]
    stage(block)
    mark("first block (64 rows)")
    stage(block)
    mark("second block")
    return out


def _block(tok):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from connectors import columns as C

    texts = pq.read_table(ROOT / "data" / "sample" / "wiki_vital.parquet", columns=["text"]).column("text")
    ids = tok([t[:400] for t in texts.to_pylist()[:64]], truncation=True, max_length=128)["input_ids"]
    return pa.table({C.INPUT_IDS: pa.array(ids, pa.list_(pa.int32())), C.REJECT: pa.array([None] * 64, pa.string())})


def _in_ray(model_path: str) -> dict:
    """The same steps inside a plain Ray actor (one CPU), and the time to its first line."""
    import ray

    ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}}
    )

    @ray.remote(num_cpus=1)
    class Probe:
        def __init__(self):
            self.entered = time.time()

        def run(self, path):
            return self.entered, _steps(path)

    started = time.time()
    entered, steps = ray.get(Probe.remote().run.remote(model_path))
    ray.shutdown()
    return {"worker start (.remote() to __init__)": [round(entered - started, 3), None], **steps}


def _child(model_path: str, in_ray: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", model_path] + (["--in-ray"] if in_ray else [])
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _table(title: str, runs: list[dict]) -> None:
    print(f"\n{title}: median of {len(runs)} fresh processes, seconds: wall, CPU of the process [walls]")
    for name in runs[0]:
        wall = statistics.median(r[name][0] for r in runs)
        cpus = [r[name][1] for r in runs if r[name][1] is not None]
        shown = f"{statistics.median(cpus):6.2f}" if cpus else "     -"
        print(f"  {name:40s} {wall:6.2f} {shown}   [{', '.join(f'{r[name][0]:.2f}' for r in runs)}]")
    ours = [k for k in runs[0] if not k.startswith(("worker start", "ray + ray.data", "first", "second"))]
    wall = statistics.median(sum(r[k][0] for k in ours) for r in runs)
    cpus = statistics.median(sum(r[k][1] for k in ours) for r in runs)
    print(f"  {'torch .. constructor (the actor start)':40s} {wall:6.2f} {cpus:6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--models", default="tiny,minilm")
    parser.add_argument("--no-ray", action="store_true", help="skip the in-actor measurement")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--in-ray", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_in_ray(args.child) if args.in_ray else _steps(args.child)))
        return

    from _machine import cpu

    print(f"encoder actor start, {cpu()}, {time.strftime('%Y-%m-%d')}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            path = MODELS[name]
            if path is None:
                from helpers.table_model import build_tiny_bert

                path = str(build_tiny_bert(Path(tmp) / "tiny-bert"))
            _table(f"{name}: fresh process", [_child(path, False) for _ in range(args.runs)])
            if not args.no_ray:
                _table(f"{name}: in a Ray actor", [_child(path, True) for _ in range(args.runs)])


if __name__ == "__main__":
    main()
