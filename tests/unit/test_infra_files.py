"""Cluster files: they parse, Ray accepts them, and every command in them names real things.

ray_cluster.yaml goes through Ray's own config preparation and schema check (what `ray up` does
before it talks to AWS). The job commands in ray_cluster.yaml, infra/rayjob.yaml and the docs are
parsed with the job's own argparse and config loader; pip commands must name existing pin files and
extras; versions that must agree (Ray in the image, the RayJob and constraints.txt) are compared.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import re
import shlex
from pathlib import Path

import pytest
import tomllib
import yaml

from pipelines.config import load_config

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "ray_cluster.yaml"
RAYJOB = ROOT / "infra" / "rayjob.yaml"
DOCKERFILE = ROOT / "infra" / "Dockerfile"


def _pins(name: str) -> dict[str, str]:
    pins = {}
    for line in (ROOT / name).read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            package, version = line.strip().split("==")
            pins[package.lower().replace("_", "-")] = version
    return pins


def _extras() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])


def check_job_command(command: str, workdir: Path = ROOT):
    """Parse ``python -m MODULE ARGS`` with the module's own parser and, for jobs.index, its config."""
    argv = shlex.split(command, comments=True)  # a trailing "# ..." in a docs block is not an argument
    start = argv.index("python")
    assert argv[start + 1] == "-m", command
    module_name, args = argv[start + 2], argv[start + 3 :]
    assert importlib.util.find_spec(module_name) is not None, f"no module {module_name}"
    module = importlib.import_module(module_name)
    parsed = module.parse_args(args)  # argparse exits (SystemExit) on an unknown option
    if module_name == "jobs.index":
        assert parsed.config, "a cluster job should name its config file"
        config_path = workdir / parsed.config
        assert config_path.is_file(), f"{parsed.config} does not exist"
        return load_config(config_path, parsed.overrides)  # raises ConfigError naming a bad key
    return parsed


def _continued_lines(text: str, startswith: str) -> list[str]:
    """Commands starting with ``startswith`` in comments or docs, with ``\\`` continuations joined."""
    commands, current = [], None
    for raw in text.splitlines():
        line = raw.strip().lstrip("#").strip()
        if current is not None:
            current += " " + line.rstrip("\\").strip()
        elif line.startswith(startswith):
            current = line.rstrip("\\").strip()
        else:
            continue
        if not line.endswith("\\"):
            commands.append(current)
            current = None
    return commands


@pytest.fixture(scope="module")
def cluster():
    return yaml.safe_load(CLUSTER.read_text())


def test_cluster_file_passes_rays_own_validation(cluster):
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cluster))
    validate_config(prepared)
    assert prepared["head_node_type"] == "head"


def test_cluster_has_cpu_head_and_autoscaling_gpu_workers(cluster):
    types = cluster["available_node_types"]
    assert types[cluster["head_node_type"]]["resources"].get("GPU", 0) == 0
    gpu = types["gpu_worker"]
    assert gpu["resources"]["GPU"] >= 1 and gpu["min_workers"] == 0 < gpu["max_workers"]
    # One logical CPU: the encoder actor takes it, so CPU-only tasks cannot land on GPU nodes.
    assert gpu["resources"]["CPU"] == 1
    assert cluster["max_workers"] >= sum(
        t.get("max_workers", 0) for name, t in types.items() if name != cluster["head_node_type"]
    )


def _pip_installs(commands):
    return [shlex.split(c) for c in commands if "pip install" in c and " -e " in c]


def test_cluster_setup_commands_use_real_pin_files_and_extras(cluster):
    mount = next(iter(cluster["file_mounts"]))
    assert cluster["file_mounts"][mount] == "."
    gpu_setup = cluster["available_node_types"]["gpu_worker"]["worker_setup_commands"]
    for commands, extra in ((cluster["setup_commands"], None), (gpu_setup, "gpu")):
        installs = _pip_installs(commands)
        assert len(installs) == 1
        argv = installs[0]
        constraints = Path(argv[argv.index("-c") + 1])
        assert constraints.parent == Path(mount) and (ROOT / constraints.name).is_file(), constraints
        target = argv[argv.index("-e") + 1]
        path, _, extras = target.partition("[")
        assert path == mount
        wanted = set(filter(None, extras.rstrip("]").split(",")))
        assert wanted <= _extras()
        assert (extra in wanted) if extra else not wanted


def test_cluster_job_command_is_a_valid_index_job(cluster):
    commands = _continued_lines(CLUSTER.read_text(), "ray job submit")
    assert commands, "ray_cluster.yaml documents no `ray job submit` command"
    for command in commands:
        config = check_job_command(command.split(" -- ", 1)[1])
        assert config.model.backend == "vllm" and config.compute.gpus_per_actor == 1
        assert config.compute.cpus_per_actor == 1  # what a gpu_worker node advertises
        assert config.sink.uri.startswith("s3://")


@pytest.fixture(scope="module")
def rayjob():
    return yaml.safe_load(RAYJOB.read_text())


def test_rayjob_manifest_shape(rayjob):
    assert (rayjob["apiVersion"], rayjob["kind"]) == ("ray.io/v1", "RayJob")
    spec = rayjob["spec"]
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == _pins("constraints.txt")["ray"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    gpu = groups["gpu"]
    container = gpu["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["rayStartParams"]["num-cpus"] == "1" and gpu["minReplicas"] == 0 < gpu["maxReplicas"]
    images = {head["image"], container["image"], groups["cpu"]["template"]["spec"]["containers"][0]["image"]}
    assert len(images) == 1  # one image (infra/Dockerfile) on every node
    assert yaml.safe_load(spec["runtimeEnvYAML"])["working_dir"] == _dockerfile_workdir()


def test_rayjob_entrypoint_is_a_valid_index_job(rayjob):
    config = check_job_command(rayjob["spec"]["entrypoint"])
    assert config.model.backend == "vllm"
    assert config.compute.gpus_per_actor == int(
        {g["groupName"]: g for g in rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]}["gpu"]["template"]["spec"][
            "containers"
        ][0]["resources"]["limits"]["nvidia.com/gpu"]
    )


def _dockerfile_workdir() -> str:
    return re.search(r"^WORKDIR\s+(\S+)", DOCKERFILE.read_text(), re.M).group(1)


def test_dockerfile_copies_real_paths_and_pins_rays_version():
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)", text, re.M).group(1)
    assert base.startswith(f"rayproject/ray:{_pins('constraints.txt')['ray']}-py311")
    copies = re.findall(r"^COPY\s+(.+)$", text, re.M)
    assert copies, "infra/Dockerfile copies nothing into the image"
    for line in copies:
        for source in line.split()[:-1]:
            assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"
    install = re.search(r"pip install[^\n]*-c (\S+) -e '\.\[(\w+)\]'", text)
    assert install and (ROOT / install.group(1)).is_file() and install.group(2) in _extras()
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv*" in ignored and ".git" in ignored  # keep multi-GB virtualenvs out of the context


def test_gpu_pins_hold_vllm_and_agree_with_the_main_pins():
    gpu, main = _pins("constraints-gpu.txt"), _pins("constraints.txt")
    assert "vllm" in gpu and "torch" in gpu
    for package in ("ray", "lancedb", "pylance", "pyarrow", "pydantic"):
        assert gpu[package] == main[package], package


DOCS = ["README.md", "infra/README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))]
# The pages that show how to run the jobs, and what each must show: a page reworded so that its
# commands no longer parse as commands (or lose them) fails here instead of passing with nothing checked.
SHOWN = {
    "README.md": {"jobs.index", "jobs.query"},
    "docs/configuration.md": {"jobs.index"},
    "docs/deploy.md": {"jobs.index", "ray job submit"},
    "docs/evaluation.md": {"jobs.evaluate"},
    "docs/failures.md": {"jobs.index"},
    "docs/querying.md": {"jobs.query"},
    "docs/s3.md": {"jobs.index", "jobs.query", "ray job submit"},
}


def _doc_commands(text: str) -> list[tuple[str, str]]:
    """``(how, command)`` for each ``python -m jobs.*`` command of a page, ``how`` being the module, or
    ``"ray job submit"`` for the command after ``--`` of a submit."""
    found = [("python", c) for c in _continued_lines(text, "python -m jobs.")]
    found += [("ray job submit", c.split(" -- ", 1)[1]) for c in _continued_lines(text, "ray job submit")]
    commands = []
    for how, command in found:
        words = shlex.split(command, comments=True)
        if "--print-config" in words or "..." in " ".join(words):  # shown for their output, or elided
            continue
        commands.append((words[words.index("-m") + 1] if how == "python" else how, command))
    return commands


@pytest.mark.parametrize("doc", DOCS)
def test_job_commands_in_docs_are_valid(doc):
    assert set(SHOWN) <= set(DOCS), f"pages that should show job commands are gone: {sorted(set(SHOWN) - set(DOCS))}"
    commands = _doc_commands((ROOT / doc).read_text())
    for _, command in commands:
        assert check_job_command(command) is not None, command
    missing = SHOWN.get(doc, set()) - {how for how, _ in commands}
    assert not missing, f"{doc} shows no checkable {sorted(missing)} command (found: {commands})"


def test_the_grafana_dashboard_queries_only_metrics_the_job_exports():
    """infra/grafana/embedpipe.json: valid JSON, and every ``ray_embedpipe_*`` series it queries is one
    that pipelines/run/prometheus.py makes (a counter gains ``_total``, a histogram ``_bucket``;
    tests/integration/test_run_metrics.py reads the same names off a real head's endpoint)."""
    import json

    dashboard = json.loads((ROOT / "infra" / "grafana" / "embedpipe.json").read_text())
    source = (ROOT / "pipelines" / "run" / "prometheus.py").read_text()
    counters = {f"ray_embedpipe_{n}_total" for n in re.findall(r'counter\(\s*"(\w+)"', source)}
    others = set(re.findall(r'"(embedpipe_\w+)"', source))
    exported = counters | {f"ray_{n}{suffix}" for n in others for suffix in ("_total", "_bucket")}
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"ray_embedpipe_\w+", target["expr"])
    }
    assert len(counters) >= 8 and len(queried) >= 10
    assert queried <= exported, sorted(queried - exported)
    assert all(panel["targets"] for panel in dashboard["panels"])
