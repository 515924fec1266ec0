"""The terminal view of a ``reward personal`` report: levels beside baselines, with CIs."""

from __future__ import annotations

from rich.table import Table

ROWS = (("global", "level"), ("segment", "level"), ("user", "level"), ("ridge", "baseline"),
        ("user_intercept", "baseline"), ("pca_clusters", "baseline"),
        ("knn_users", "baseline"))  # fmt: skip
RIVALS = ("global-ridge", "segment-pca_clusters", "user-knn_users", "user-user_intercept",
          "segment-global", "user-segment", "user-global")  # fmt: skip


def _cell(entry: dict) -> str:
    ci = entry.get("ci")
    return f"{entry['acc']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else " (no CI)")


def _diff(entry: dict) -> str:
    ci = entry.get("ci")
    mark = "" if not ci else " *" if ci[0] > 0 or ci[1] < 0 else ""
    return f"{entry['diff']:+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]{mark}" if ci else "")


def print_report(console, report: dict) -> None:
    """Header (split, sizes, behaviour mode), one table per segmentation option, warnings."""
    b = report["behaviour"]
    console.print(
        f"split {report['split']}: {report['users']} users, {report['items']} items, "
        f"{report['train_votes']} train / {report['test_votes']} test votes "
        f"({report['test_users']} test users, {report['test_pairs']} within-user test pairs); "
        f"segmentation behaviour: [bold]{b['mode']}[/bold] ({b['why']})",
        highlight=False,
    )
    for option, res in report["segmentations"].items():
        if isinstance(res, str):
            console.print(f"segmentation {option}: {res}", highlight=False)
            continue
        table = Table(title=f"segmentation {option} (k={res['k']}); 95% CIs resample users")
        for col in ("model", "kind", "acc_vote (per vote)", "acc_pair (within user)"):
            table.add_column(col)
        for model, kind in ROWS:
            table.add_row(model, kind, _cell(res["acc_vote"][model]), _cell(res["acc_pair"][model]))
        console.print(table)
        diffs = Table(title="differences (* CI excludes 0)")
        for col in ("a − b", "acc_vote", "acc_pair"):
            diffs.add_column(col)
        for name in RIVALS:
            d = res["diffs"][name]
            diffs.add_row(name.replace("-", " − "), _diff(d["acc_vote"]), _diff(d["acc_pair"]))
        console.print(diffs)
    for line in report.get("warnings", []) + report.get("notes", []):
        console.print(f"[yellow]warning:[/yellow] {line}", highlight=False)
