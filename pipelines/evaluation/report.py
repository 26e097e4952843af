"""The evaluation report in three forms: Markdown tables, a JSON file, a PNG of quality against bytes.

The Markdown has the searches by dimension and index (below), then the search modes side by side:
text, vector and hybrid search's nDCG@10 and Recall@100 on each table (:mod:`pipelines.evaluation.modes`).

The bytes on the x axis are what a search scans per vector: the float vector for exact search, the
index's codes otherwise (PQ: one byte per sub-vector, int8: one byte per dimension, RaBitQ: num_bits per
dimension). Indexed searches also re-read ``k * refine_factor`` float vectors per query to re-score;
the table shows both settings next to the scores.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["format_markdown", "write_json", "write_plot", "write_report"]

COLUMNS = ("ndcg@10", "recall@10", "recall@100", "mrr@10")
LABELS = {
    "exact": "exact (float32)",
    "ivf_pq": "IVF-PQ",
    "ivf_sq": "IVF-SQ int8",
    "ivf_rq": "IVF-RQ",
    "ivf_hnsw_sq": "IVF-HNSW-SQ",
}
STYLES = {"exact": ("o", "-"), "ivf_pq": ("s", "--"), "ivf_sq": ("^", "-."), "ivf_rq": ("D", ":")}
PLOTTED = ("ndcg@10", "recall@10")


def _num(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def format_markdown(report: dict) -> str:
    d = report["dataset"]
    lines = [
        f"{d['name']} ({d['split']}): {d['documents']} documents, {d['queries']} queries, "
        f"{d['judgments']} judgments; model {report['model']['path']}",
        "",
        "| dim | search | bytes/vector | nDCG@10 | Recall@10 | Recall@100 | MRR@10 | nprobes | refine | "
        "recall@10 vs exact |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["results"]:
        m = row["metrics"]
        label = LABELS.get(row["search"], row["search"])
        if row["search"] == "exact":
            label = f"exact ({row['storage']})"
        elif row["search"] == "ivf_rq":
            label = f"IVF-RQ {row['storage']}"  # RaBitQ's bits per dimension, e.g. 4-bit
        lines.append(
            f"| {row['dimension']} | {label} | {row['bytes_per_vector']:g} | "
            + " | ".join(f"{m[c]:.3f}" for c in COLUMNS)
            + f" | {_num(row['nprobes'])} | {_num(row['refine_factor'])} | {_num(row['recall_at_10_vs_exact'])} |"
        )
    return "\n".join(lines + _modes_markdown(report.get("modes") or [])) + "\n"


MODE_COLUMNS = (("ndcg@10", "nDCG@10"), ("recall@100", "Recall@100"))


def _modes_markdown(rows: list[dict]) -> list[str]:
    """The search modes side by side, one line per table: nDCG@10 of each mode, then Recall@100 of each."""
    if not rows:
        return []
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    tables: dict[str, dict] = {}
    for r in rows:
        tables.setdefault(r["table"], {"dimension": r["dimension"]})[r["mode"]] = r["metrics"]
    header = [f"{mode} {label}" for _, label in MODE_COLUMNS for mode in modes]
    fusion = next((r["fusion"] for r in rows if r.get("fusion")), None)
    settings = f" ({', '.join(f'{name} {value}' for name, value in fusion.items())})" if fusion else ""
    lines = [
        "",
        "Search modes (pipelines/evaluation/modes.py): vector search exact, hybrid = reciprocal rank fusion "
        f"of the vector and the text (BM25) search{settings}",
        "",
        "| dim | " + " | ".join(header) + " |",
        "|---:|" + "---:|" * len(header),
    ]
    for table in tables.values():
        cells = [f"{table[mode][metric]:.3f}" for metric, _ in MODE_COLUMNS for mode in modes]
        lines.append(f"| {table['dimension']} | " + " | ".join(cells) + " |")
    return lines


def write_json(report: dict, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return path


def write_plot(report: dict, path: str | Path) -> Path:
    """nDCG@10 and Recall@10 against bytes per vector (log scale), one line per search method."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("the evaluation plot needs matplotlib: pip install 'embedpipe[eval]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods: dict[str, list[dict]] = {}
    for row in report["results"]:
        methods.setdefault(row["search"], []).append(row)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    ticks = sorted({r["bytes_per_vector"] for r in report["results"]})
    for ax, metric, title in zip(axes, PLOTTED, ("nDCG@10", "Recall@10")):
        for method, rows in methods.items():
            rows = sorted(rows, key=lambda r: r["bytes_per_vector"])
            xs = [r["bytes_per_vector"] for r in rows]
            ys = [r["metrics"][metric] for r in rows]
            marker, style = STYLES.get(method, ("o", "-"))
            ax.plot(xs, ys, marker=marker, linestyle=style, label=LABELS.get(method, method), alpha=0.85)
            for r, x, y in zip(rows, xs, ys):
                ax.annotate(f"{r['dimension']}d", (x, y), textcoords="offset points", xytext=(5, -9), fontsize=7)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks], fontsize=7)
        ax.minorticks_off()
        ax.set_xlabel("bytes per vector scanned (log scale)")
        ax.set_ylabel(title)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    d = report["dataset"]
    fig.suptitle(
        f"{d['name']}: {d['documents']} documents, {d['queries']} queries; {Path(report['model']['path']).name}",
        fontsize=10,
    )
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(report: dict, out_dir: str | Path) -> dict[str, Path]:
    """``results.md``, ``results.json`` and ``quality_vs_bytes.png`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "results.md"
    md.write_text(format_markdown(report))
    return {
        "markdown": md,
        "json": write_json(report, out / "results.json"),
        "plot": write_plot(report, out / "quality_vs_bytes.png"),
    }
