"""``embedpipe check-model PATH``: the chain the project settles on and its vectors beside sentence-transformers'.

On the packaged MiniLM through the command line (exit 0), on a zoo model with a Dense head and a texts
file, and on a module it cannot run (exit 2, naming it). The verdict below 0.9999 (exit 1, BAD lines) is
tests/unit/test_model_pipeline.py's.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from jobs.check_model import main

ROOT = Path(__file__).resolve().parents[2]


def test_packaged_minilm_from_the_command_line():
    done = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "check-model", "packaged:all-MiniLM-L6-v2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "chain        Transformer -> Pooling(mean): 384 dims" in out
    assert "pooling mean, include_prompt true (model's 1_Pooling/config.json)" in out
    assert out.count("  ok  ") == 16 and "result       worst cosine 1.0000" in out  # 8 texts x 2 roles


def test_a_dense_head_model_and_its_texts_file(model_zoo, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("first text\n\nsecond, longer text about rivers and mountains\n")
    assert main([str(model_zoo("labse")), "--texts", str(texts)]) == 0
    out = capsys.readouterr().out
    assert "chain        Transformer -> Pooling(cls) -> Dense(64->32, Tanh): 32 dims" in out
    assert out.count("  ok  ") == 4  # 2 texts (the empty line skipped) x 2 roles
    assert "the same vectors" in out


def test_a_module_it_cannot_run_is_named_with_exit_2(model_zoo, tmp_path, capsys):
    model = tmp_path / "custom"
    shutil.copytree(model_zoo("bert_mean"), model)
    modules = json.loads((model / "modules.json").read_text())
    modules.append({"idx": len(modules), "name": "x", "path": "9_X", "type": "my_lab.layers.Whitening"})
    (model / "modules.json").write_text(json.dumps(modules))
    assert main([str(model)]) == 2
    err = capsys.readouterr().err
    assert "'Whitening' is not supported" in err
