"""The documentation: the generated configuration reference is current, the README stays short, links resolve.

No Ray, no model: these read files and the config schema only.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from pipelines.config import PipelineConfig

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CONFIG_DOC = ROOT / "docs" / "configuration.md"
README_LIMIT = 12_000
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]


def _generator():
    spec = importlib.util.spec_from_file_location("config_docs", ROOT / "scripts" / "config_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _schema_keys(model: type[BaseModel] = PipelineConfig, prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += _schema_keys(annotation, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def test_configuration_reference_is_generated_from_the_schema():
    expected = _generator().render()
    assert CONFIG_DOC.is_file(), "docs/configuration.md is missing: run `python scripts/config_docs.py`"
    assert CONFIG_DOC.read_text() == expected, (
        "docs/configuration.md is stale (pipelines/config.py changed): run `python scripts/config_docs.py`"
    )


def test_config_docs_check_flags_a_stale_file(tmp_path, capsys):
    generator = _generator()
    page = tmp_path / "configuration.md"
    assert generator.main(["--check", "--out", str(page)]) == 1  # missing
    page.write_text(generator.render().replace("`sink.uri`", "`sink.url`"))
    assert generator.main(["--check", "--out", str(page)]) == 1  # stale
    assert "python scripts/config_docs.py" in capsys.readouterr().err
    assert generator.main(["--out", str(page)]) == 0
    assert generator.main(["--check", "--out", str(page)]) == 0
    assert page.read_text() == generator.render()


def test_every_config_key_is_documented():
    text = CONFIG_DOC.read_text()
    keys = _schema_keys()
    assert len(keys) > 50 and "model.vllm.tensor_parallel_size" in keys
    missing = [key for key in keys if f"`{key}`" not in text]
    assert not missing, f"not in docs/configuration.md: {missing}; run `python scripts/config_docs.py`"


def test_readme_is_short():
    size = len(README.read_text())
    assert size < README_LIMIT, (
        f"README.md is {size} characters (limit {README_LIMIT}): move detail into a page under docs/ and link it"
    )


def test_readme_starts_with_the_demo_and_test_commands():
    lines = README.read_text().splitlines()
    assert lines[0].startswith("# ") and lines[2] == "```bash"
    assert lines[3].startswith("bash scripts/demo.sh ") and lines[4].startswith("bash scripts/test.sh ")
    assert lines[5] == "```"


_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
_INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)


def relative_links(text: str) -> list[str]:
    """Targets of the Markdown links and images in ``text`` that point at files of this repository."""
    text = _CODE_SPAN.sub("", _FENCE.sub("", text))
    targets = _INLINE_LINK.findall(text) + _REFERENCE.findall(text)
    return [t for t in targets if not re.match(r"(?i)^([a-z][a-z0-9+.-]*:|#|//)", t)]


def test_link_finder():
    text = (
        "[a](docs/x.md#part) ![img](y.png) [web](https://e.org/a.md) [anchor](#top) "
        "`[code](nope.md)`\n```\n[block](nope.md)\n```\n[ref]: ../z.md\n"
    )
    assert relative_links(text) == ["docs/x.md#part", "y.png", "../z.md"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_point_to_existing_files(page):
    broken = []
    for target in relative_links(page.read_text()):
        path = target.split("#", 1)[0].split("?", 1)[0]
        if not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)} links to files that do not exist: {broken}"


def test_every_docs_page_can_be_reached_from_the_readme():
    seen, todo = set(), [README.resolve()]
    while todo:
        page = todo.pop()
        if page in seen or page.suffix != ".md" or not page.is_file():
            continue
        seen.add(page)
        todo += [(page.parent / t.split("#", 1)[0]).resolve() for t in relative_links(page.read_text())]
    orphans = sorted(p.name for p in (ROOT / "docs").glob("*.md") if p.resolve() not in seen)
    assert not orphans, f"docs pages no link from the README leads to: {orphans}"


SESSION_LABEL = re.compile(r"\bsession \d+", re.IGNORECASE)


def _tracked_text_files() -> list[Path]:
    folders = ("docs", "bench", "scripts", "pipelines", "connectors", "jobs", "tests", "infra")
    files = [*ROOT.glob("*"), *(p for folder in folders for p in (ROOT / folder).rglob("*"))]
    suffixes = (".md", ".py", ".sh", ".yaml", ".yml", ".toml", ".txt", ".json")
    return [p for p in files if p.is_file() and p.suffix in suffixes]


def test_session_label_finder():
    assert SESSION_LABEL.search("figures of Session 12 on a Xeon")
    assert not SESSION_LABEL.search("a Ray session's log; session-scoped fixture")


def test_no_file_names_a_figure_by_its_work_session():
    # "session 12" meant nothing to a reader who was not there: figures are named by date and machine.
    found = [
        f"{p.relative_to(ROOT)}:{n}"
        for p in _tracked_text_files()
        if p != Path(__file__).resolve()
        for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
        if SESSION_LABEL.search(line)
    ]
    assert not found, found
