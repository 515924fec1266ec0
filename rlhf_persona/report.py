"""Plots and an HTML report of a loop run, read from the run folder's plain files only.

Inputs (written by ``loop.py``): ``metrics.jsonl`` records with ``stage: "eval"`` (one per round)
and ``RUN_DIR/round_N/samples.json``. Output: ``RUN_DIR/report/index.html`` beside one PNG per
plot, so the report opens offline from disk.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display here; must be set before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402

from rlhf_persona.errors import UserError  # noqa: E402
from rlhf_persona.tracking import read_metrics  # noqa: E402

POLICIES = ("base", "global", "personalized")
PLOTS = ("satisfaction", "reward_accuracy", "segment_sizes", "kl")


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _eval_records(run_dir: Path) -> list[dict]:
    records = [m for m in read_metrics(run_dir) if m.get("stage") == "eval"]
    latest: dict[int, dict] = {}
    for rec in records:  # a resumed round may have logged twice: keep the last
        latest[rec["round"]] = rec
    return [latest[r] for r in sorted(latest)]


def _plot_satisfaction(records: list[dict], path: Path) -> None:
    segments = sorted(records[-1]["segments"])
    fig, axes = plt.subplots(1, len(segments), figsize=(4 * len(segments), 3.4), squeeze=False)
    rounds = [r["round"] for r in records]
    for ax, seg in zip(axes[0], segments, strict=True):
        for policy in POLICIES:
            ys = [r["segments"].get(seg, {}).get(policy, {}).get("thumbs_up") for r in records]
            ax.plot(rounds, ys, marker="o", label=policy)
        ax.set_title(f"segment {seg}")
        ax.set_xticks(rounds)
        ax.set_xlabel("round")
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("true thumbs-up rate")
    axes[0][-1].legend(loc="lower right")
    fig.suptitle("Satisfaction per segment")
    _save(fig, path)


def _plot_reward_accuracy(records: list[dict], path: Path) -> None:
    last = records[-1].get("reward", {})
    accs = last.get("per_segment_acc", {})
    ceil = last.get("ceiling", {})
    segs = sorted(accs)
    fig, ax = plt.subplots(figsize=(6, 3.4))
    xs = range(len(segs))
    ax.bar([x - 0.2 for x in xs], [accs[s] for s in segs], width=0.4, label="reward model")
    ax.bar([x + 0.2 for x in xs], [ceil.get(s, 0) for s in segs], width=0.4, label="Bayes ceiling")
    ax.set_xticks(list(xs), [str(s) for s in segs])
    ax.set_xlabel("segment")
    ax.set_ylabel("held-out pairwise accuracy")
    ax.set_ylim(0.4, 1)
    ax.legend()
    ax.set_title("Reward model vs ceiling (last round)")
    _save(fig, path)


def _plot_segment_sizes(records: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.4))
    rounds = [r["round"] for r in records]
    segs = sorted({s for r in records for s in r.get("segment_sizes", {})})
    bottom = [0] * len(rounds)
    for seg in segs:
        sizes = [r.get("segment_sizes", {}).get(seg, 0) for r in records]
        ax.bar(rounds, sizes, bottom=bottom, label=f"segment {seg}")
        bottom = [b + s for b, s in zip(bottom, sizes, strict=True)]
    ax.set_xlabel("round")
    ax.set_ylabel("users")
    ax.legend()
    ax.set_title("Segment sizes")
    _save(fig, path)


def _plot_kl(records: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.4))
    rounds = [r["round"] for r in records]
    names = sorted({k for r in records for k in r.get("kl", {})})
    for name in names:
        ax.plot(rounds, [r.get("kl", {}).get(name) for r in records], marker="o", label=name)
    ax.set_xlabel("round")
    ax.set_ylabel("KL(policy ‖ base), nats/token")
    ax.legend()
    ax.set_title("KL from the base policy")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


_PLOTTERS = {
    "satisfaction": _plot_satisfaction,
    "reward_accuracy": _plot_reward_accuracy,
    "segment_sizes": _plot_segment_sizes,
    "kl": _plot_kl,
}


def _table_html(last: dict) -> str:
    rows = []
    for seg, vals in sorted(last["segments"].items()):
        cells = "".join(
            f"<td>{vals.get(p, {}).get('thumbs_up', float('nan')):.3f}</td>" for p in POLICIES
        )
        rows.append(f"<tr><td>{html.escape(str(seg))}</td>{cells}</tr>")
    head = "".join(f"<th>{p}</th>" for p in POLICIES)
    return f"<table><tr><th>segment</th>{head}</tr>{''.join(rows)}</table>"


def _samples_html(run_dir: Path, last_round: int) -> str:
    path = run_dir / f"round_{last_round}" / "samples.json"
    if not path.exists():
        return "<p>No samples recorded.</p>"
    out = []
    for seg, items in sorted(json.loads(path.read_text()).items()):
        out.append(f"<h3>Segment {html.escape(str(seg))}</h3>")
        for item in items:
            cells = "".join(f"<td><pre>{html.escape(item.get(p, ''))}</pre></td>" for p in POLICIES)
            out.append(
                f"<p><b>Prompt:</b> {html.escape(item['prompt'])}</p>"
                f"<table><tr>{''.join(f'<th>{p}</th>' for p in POLICIES)}</tr>"
                f"<tr>{cells}</tr></table>"
            )
    return "\n".join(out)


def write_report(run_dir: str | Path) -> Path:
    """Render plots and ``report/index.html`` for a run folder; returns the HTML path."""
    run_dir = Path(run_dir)
    records = _eval_records(run_dir)
    if not records:
        raise UserError(f"{run_dir}: no evaluated rounds in metrics.jsonl to report on")
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    for name in PLOTS:
        _PLOTTERS[name](records, out / f"{name}.png")
    last = records[-1]
    imgs = "\n".join(f'<h2>{n.replace("_", " ")}</h2><img src="{n}.png" alt="{n}">' for n in PLOTS)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>rlhf_persona run {html.escape(run_dir.name)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px;vertical-align:top}}
pre{{white-space:pre-wrap;max-width:340px;margin:0}}img{{max-width:100%}}</style></head>
<body><h1>Run {html.escape(run_dir.name)}</h1>
<h2>Thumbs-up rate per segment after round {last["round"]}</h2>{_table_html(last)}
{imgs}
<h2>Sample replies (round {last["round"]})</h2>{_samples_html(run_dir, last["round"])}
</body></html>"""
    index = out / "index.html"
    index.write_text(page)
    return index
