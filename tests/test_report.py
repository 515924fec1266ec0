"""The HTML report on hand-made run folders (one and two rounds), checked in headless Chromium:
every plot loads, KL is in nats per reply, a one-round run is drawn as bars, each true segment's
row carries the card of the learned segment its users were assigned to, gains have intervals and
counts, and the config and stage timings are there. Saves test-artifacts/report_*.png."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from rlhf_persona.config import ExperimentConfig, dump_config
from rlhf_persona.report import PLOTS, write_report

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def _card(seg: int, size: int, liked: str, disliked: str, persona: str) -> dict:
    return {"segment_id": seg, "size": size, "share": size / 24, "attributes": [],
            "rewards": [{"trait": liked, "weight": 0.4}],
            "dislikes": [{"trait": disliked, "weight": -0.3}],
            "n_with_feedback": size, "persona_text": persona}  # fmt: skip


# Learned segment 1 holds brief_casual's users, 0 thorough_formal's: matching must not go by order.
CARDS = [_card(0, 14, "length", "emoji", "They reward long, formal replies."),
         _card(1, 10, "emoji", "length", "They reward short replies with emoji.")]  # fmt: skip


def _record(r: int) -> dict:
    def rates(b, g, p):
        return {name: {"thumbs_up": v, "utility": v, "n": 6}
                for name, v in (("base", b), ("global", g), ("personalized", p))}  # fmt: skip

    return {
        "round": r,
        "segments": {"brief_casual": rates(0.4, 0.45, 0.6 + 0.05 * r),
                     "thorough_formal": rates(0.5, 0.5, 0.55)},  # fmt: skip
        "gain": {
            "brief_casual": {"vs_base": {"mean": 0.2, "ci95": [0.05, 0.35], "n": 6},
                             "vs_global": {"mean": 0.15, "ci95": [-0.01, 0.31], "n": 6}},
            "thorough_formal": {"vs_base": {"mean": 0.05, "ci95": [-0.1, 0.2], "n": 6},
                                "vs_global": {"mean": 0.05, "ci95": [-0.1, 0.2], "n": 6}},
        },  # fmt: skip
        "assigned": {"brief_casual": {"1": 2, "0": 1}, "thorough_formal": {"0": 3}},
        "segment_sizes": {"0": 14, "1": 10},
        "kl": {"global": 0.8, "personalized": 1.5 + r},
        "reward": {"per_segment_acc": {"brief_casual": 0.7, "thorough_formal": 0.65},
                   "ceiling": {"brief_casual": 0.8, "thorough_formal": 0.75}, "worst_acc": 0.65},
        "stage_s": {"collect": 3.25, "segment": 0.5, "reward": 12.0, "policy": 30.0,
                    "evaluate": 8.0},
    }  # fmt: skip


def _run(tmp_path: Path, rounds: int) -> Path:
    run = tmp_path / f"run{rounds}"
    run.mkdir()
    with (run / "metrics.jsonl").open("w") as fh:
        for r in range(rounds):
            fh.write(json.dumps({"stage": "eval", "step": r, **_record(r)}) + "\n")
    (run / "config.yaml").write_text(dump_config(ExperimentConfig()))
    last = run / f"round_{rounds - 1}"
    (last / "seg").mkdir(parents=True)
    (last / "seg" / "segmenter.json").write_text(json.dumps({"cards": CARDS}))
    samples = {"brief_casual": [{"prompt": "Hi <there>", "base": "b", "global": "g",
                                 "personalized": "Hey 😀"}]}  # fmt: skip
    (last / "samples.json").write_text(json.dumps(samples))
    return run


def _open(browser, index: Path, shot: str):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(index.as_uri())
    loaded = page.evaluate(
        "Array.from(document.images).map(i => [i.getAttribute('src'), i.naturalWidth])"
    )
    assert {src for src, width in loaded if width > 100} == {f"{n}.png" for n in PLOTS}, loaded
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / shot), full_page=True)
    assert (ARTIFACTS / shot).stat().st_size > 20_000  # a rendered page, not a blank one
    assert not errors, errors
    return page


def test_report_rows_cards_gains_and_settings_in_chromium(browser, tmp_path):
    index = write_report(_run(tmp_path, 2))
    page = _open(browser, index, "report_two_rounds.png")
    row = page.locator('#segments tr[data-row="brief_casual"]')
    card = row.locator("td.card")
    assert card.get_attribute("data-segment") == "1"  # where 2 of its 3 evaluated users are
    assert "short replies with emoji" in card.inner_text()
    assert "10 users" in card.inner_text() and "rewards: emoji" in card.inner_text()
    other = page.locator('#segments tr[data-row="thorough_formal"] td.card')
    assert other.get_attribute("data-segment") == "0"
    text = row.inner_text()
    assert "+0.200" in text and "[+0.050, +0.350], n=6" in text  # gain vs base with its CI
    assert "[-0.010, +0.310], n=6" in text  # vs global
    assert "n=6 rows" in text
    timings = page.locator("#timings").inner_text()
    assert "collect" in timings and "3.2" in timings and "53.8" in timings  # total of round 0
    page.locator("#config summary").click()
    config = yaml.safe_load(page.locator("#config pre").inner_text())
    assert config["policy"]["algorithm"] == ExperimentConfig().policy.algorithm
    kl_alt = page.locator('img[src="kl.png"]').get_attribute("alt")
    assert "nats per reply" in kl_alt and "x: round" in kl_alt
    assert "Hi <there>" in page.locator("body").inner_text()  # sample text escaped, shown as is


def test_one_round_run_is_drawn_as_bars(browser, tmp_path):
    index = write_report(_run(tmp_path, 1))
    page = _open(browser, index, "report_one_round.png")
    sat = page.locator('img[src="satisfaction.png"]').get_attribute("alt")
    assert "the only round" in sat and "x: -" in sat  # segments on the axis, not a round line
    kl = page.locator('img[src="kl.png"]').get_attribute("alt")
    assert "x: policy (round 0)" in kl and "nats per reply" in kl
    assert page.locator("#timings tr").count() == 2  # header + the one round


def test_older_run_folder_without_gains_or_cards_still_reports(tmp_path):
    """Runs recorded before gains, card matching and timings existed render with dashes."""
    import warnings

    rates = {p: {"thumbs_up": 0.5} for p in ("base", "global", "personalized")}
    (tmp_path / "metrics.jsonl").write_text(
        json.dumps({"stage": "eval", "round": 0, "segments": {"a": rates}}) + "\n"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. matplotlib's "no artists for the legend"
        html = write_report(tmp_path).read_text()
    assert "No stage timings recorded" in html and "No config.yaml" in html
    assert '<tr data-row="a">' in html and "<td>—</td>" in html
