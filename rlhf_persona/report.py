"""Plots and an HTML report of a loop run, read from the run folder's plain files only.

Inputs (written by ``loop.py``): ``metrics.jsonl`` records with ``stage: "eval"`` (one per round),
``config.yaml``, ``RUN_DIR/round_N/samples.json`` and the last round's segment cards
(``round_N/seg/segmenter.json``). Output: ``RUN_DIR/report/index.html`` beside one PNG per
plot, so the report opens offline from disk.

Rows are the simulator's true segments; each shows the learned segment most of its evaluated
users were assigned to (its card: size, rewarded traits, persona), the thumbs-up rates, and the
personalized policy's gains with 95% intervals and row counts. A one-round run is drawn as bars
(a line through one point says nothing).
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
PLOTS = ("satisfaction", "gain", "reward_accuracy", "segment_sizes", "kl")


def _save(fig, path: Path) -> str:
    """Write the PNG; returns its description (titles and axis labels: the page's alt text)."""
    fig.tight_layout()
    parts = []
    for ax in fig.axes:
        parts.append(f"{ax.get_title()} (x: {ax.get_xlabel() or '-'}; y: {ax.get_ylabel() or '-'})")
    title = fig._suptitle.get_text() if fig._suptitle else ""
    description = "; ".join(dict.fromkeys([title] * bool(title) + parts))
    fig.savefig(path, dpi=90, metadata={"Description": description})
    plt.close(fig)
    return description


def _eval_records(run_dir: Path) -> list[dict]:
    records = [m for m in read_metrics(run_dir) if m.get("stage") == "eval"]
    latest: dict[int, dict] = {}
    for rec in records:  # a resumed round may have logged twice: keep the last
        latest[rec["round"]] = rec
    return [latest[r] for r in sorted(latest)]


def _plot_satisfaction(records: list[dict], path: Path) -> str:
    if len(records) == 1:
        return _bars_one_round(records[0], path)
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
    return _save(fig, path)


def _bars_one_round(record: dict, path: Path) -> str:
    """Satisfaction of a one-round run: bars per policy, grouped by segment."""
    segments = sorted(record["segments"])
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(segments)), 3.4))
    width = 0.8 / len(POLICIES)
    for k, policy in enumerate(POLICIES):
        ys = [record["segments"][s].get(policy, {}).get("thumbs_up", 0) for s in segments]
        xs = [i + (k - (len(POLICIES) - 1) / 2) * width for i in range(len(segments))]
        ax.bar(xs, ys, width=width, label=policy)
    ax.set_xticks(range(len(segments)), segments)
    ax.set_ylim(0, 1)
    ax.set_ylabel("true thumbs-up rate")
    ax.legend(loc="upper left", bbox_to_anchor=(1, 1))
    ax.set_title(f"Satisfaction per segment (round {record['round']}, the only round)")
    return _save(fig, path)


def _plot_gain(records: list[dict], path: Path) -> str:
    """Last round: personalized minus base / global per segment, with 95% intervals."""
    gains = records[-1].get("gain", {})
    segs = sorted(gains)
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(segs)), 3.4))
    for k, ref in enumerate(("base", "global")):
        vals = [gains[s][f"vs_{ref}"] for s in segs]
        means = [v["mean"] for v in vals]
        err = [[m - v["ci95"][0] for m, v in zip(means, vals, strict=True)],
               [v["ci95"][1] - m for m, v in zip(means, vals, strict=True)]]  # fmt: skip
        xs = [i + (k - 0.5) * 0.4 for i in range(len(segs))]
        ax.bar(xs, means, width=0.4, yerr=err, capsize=4, label=f"personalized − {ref}")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(segs)), segs)
    ax.set_ylabel("thumbs-up rate difference")
    if segs:
        ax.legend()
    title = f"round {records[-1]['round']}, 95% CI" if segs else "not recorded in this run"
    ax.set_title(f"Gain of the personalized policy ({title})")
    return _save(fig, path)


def _plot_reward_accuracy(records: list[dict], path: Path) -> str:
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
    return _save(fig, path)


def _plot_segment_sizes(records: list[dict], path: Path) -> str:
    fig, ax = plt.subplots(figsize=(6, 3.4))
    rounds = [r["round"] for r in records]
    segs = sorted({s for r in records for s in r.get("segment_sizes", {})})
    bottom = [0] * len(rounds)
    for seg in segs:
        sizes = [r.get("segment_sizes", {}).get(seg, 0) for r in records]
        ax.bar(rounds, sizes, bottom=bottom, label=f"segment {seg}")
        bottom = [b + s for b, s in zip(bottom, sizes, strict=True)]
    ax.set_xticks(rounds)
    ax.set_xlabel("round")
    ax.set_ylabel("users")
    if segs:
        ax.legend()
    ax.set_title("Segment sizes")
    return _save(fig, path)


def _plot_kl(records: list[dict], path: Path) -> str:
    fig, ax = plt.subplots(figsize=(6, 3.4))
    rounds = [r["round"] for r in records]
    names = sorted({k for r in records for k in r.get("kl", {})})
    for k, name in enumerate(names):
        ys = [r.get("kl", {}).get(name) for r in records]
        if len(records) == 1:
            ax.bar([k], ys, width=0.6, label=name)
        else:
            ax.plot(rounds, ys, marker="o", label=name)
    if len(records) == 1:
        ax.set_xticks(range(len(names)), names)
        ax.set_xlabel(f"policy (round {rounds[0]})")
    else:
        ax.set_xticks(rounds)
        ax.set_xlabel("round")
    # kl_from_base sums the per-token KL over each reply's tokens: one value per reply
    ax.set_ylabel("KL(policy ‖ base), nats per reply")
    if names:
        ax.legend()
    ax.set_title("KL from the base policy")
    return _save(fig, path)


_PLOTTERS = {
    "satisfaction": _plot_satisfaction,
    "gain": _plot_gain,
    "reward_accuracy": _plot_reward_accuracy,
    "segment_sizes": _plot_segment_sizes,
    "kl": _plot_kl,
}


def _cards(run_dir: Path, last_round: int) -> dict[str, dict]:
    """Segment id → card of the round's segmenter (none for runs without one)."""
    path = run_dir / f"round_{last_round}" / "seg" / "segmenter.json"
    if not path.is_file():
        return {}
    return {str(c["segment_id"]): c for c in json.loads(path.read_text()).get("cards", [])}


def _card_html(card: dict | None, seg: str | None, users: int) -> str:
    if card is None:
        return "<td>—</td>"
    liked = ", ".join(t["trait"] for t in card.get("rewards", [])) or "—"
    disliked = ", ".join(t["trait"] for t in card.get("dislikes", [])) or "—"
    return (
        f'<td class="card" data-segment="{html.escape(str(seg))}">'
        f"<b>segment {html.escape(str(seg))}"
        f"</b> · {card.get('size', '?')} users ({card.get('share', 0):.0%}; {users} of this row's "
        f"evaluated users)<br>rewards: {html.escape(liked)} · dislikes: {html.escape(disliked)}"
        f"<br><i>{html.escape(card.get('persona_text', ''))}</i></td>"
    )


def _gain_html(gain: dict | None) -> str:
    if not gain:
        return "<td>—</td>"
    lo, hi = gain["ci95"]
    return f"<td>{gain['mean']:+.3f}<br><small>[{lo:+.3f}, {hi:+.3f}], n={gain['n']}</small></td>"


def _table_html(last: dict, cards: dict[str, dict]) -> str:
    """One row per true segment: matched card, rates (n rows), gains with CIs."""
    extra = ("best_of_n",) if "best_of_n" in next(iter(last["segments"].values()), {}) else ()
    policies = POLICIES + extra
    rows = []
    for seg, vals in sorted(last["segments"].items()):
        assigned = last.get("assigned", {}).get(seg, {})
        learned = max(assigned, key=assigned.get) if assigned else None
        n = vals.get("base", {}).get("n", "?")
        rates = "".join(
            f"<td>{vals.get(p, {}).get('thumbs_up', float('nan')):.3f}</td>" for p in policies
        )
        gain = last.get("gain", {}).get(seg, {})
        rows.append(
            f'<tr data-row="{html.escape(str(seg))}"><td>{html.escape(str(seg))}<br>'
            f"<small>n={n} rows</small></td>"
            f"{_card_html(cards.get(str(learned)), learned, assigned.get(learned, 0))}{rates}"
            f"{_gain_html(gain.get('vs_base'))}{_gain_html(gain.get('vs_global'))}</tr>"
        )
    head = "".join(f"<th>{p}</th>" for p in policies)
    return (
        f'<table id="segments"><tr><th>true segment</th><th>learned segment (card)</th>{head}'
        "<th>gain vs base (95% CI)</th><th>gain vs global (95% CI)</th></tr>"
        f"{''.join(rows)}</table>"
    )


def _timings_html(records: list[dict]) -> str:
    stages = list(dict.fromkeys(k for r in records for k in r.get("stage_s", {})))
    if not stages:
        return "<p>No stage timings recorded.</p>"
    head = "".join(f"<th>{html.escape(s)}</th>" for s in stages)
    rows = []
    for rec in records:
        t = rec.get("stage_s", {})
        cells = "".join(f"<td>{t.get(s, float('nan')):.1f}</td>" for s in stages)
        rows.append(f"<tr><td>{rec['round']}</td>{cells}<td>{sum(t.values()):.1f}</td></tr>")
    return (
        f'<table id="timings"><tr><th>round</th>{head}<th>total</th></tr>{"".join(rows)}</table>'
        "<p><small>seconds of wall time per stage</small></p>"
    )


def _config_html(run_dir: Path) -> str:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return "<p>No config.yaml in the run folder.</p>"
    text = html.escape(path.read_text())
    return f'<details id="config"><summary>config.yaml</summary><pre>{text}</pre></details>'


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
    alts = {name: _PLOTTERS[name](records, out / f"{name}.png") for name in PLOTS}
    last = records[-1]
    imgs = "\n".join(
        f'<h2>{n.replace("_", " ")}</h2><img src="{n}.png" alt="{html.escape(alts[n])}">'
        for n in PLOTS
    )
    table = _table_html(last, _cards(run_dir, last["round"]))
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>rlhf_persona run {html.escape(run_dir.name)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px;vertical-align:top}}
td.card{{max-width:380px;font-size:90%}}
pre{{white-space:pre-wrap;max-width:340px;margin:0}}#config pre{{max-width:none}}
img{{max-width:100%}}</style></head>
<body><h1>Run {html.escape(run_dir.name)}</h1>
<p>{len(records)} evaluated round(s); the last is round {last["round"]}.</p>
<h2>Thumbs-up rate per segment after round {last["round"]}</h2>{table}
{imgs}
<h2>Stage timings</h2>{_timings_html(records)}
<h2>Config</h2>{_config_html(run_dir)}
<h2>Sample replies (round {last["round"]})</h2>{_samples_html(run_dir, last["round"])}
</body></html>"""
    index = out / "index.html"
    index.write_text(page)
    return index
