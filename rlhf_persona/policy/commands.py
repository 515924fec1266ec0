"""``rlhf-persona policy train``: one round of policies from a feedback store, without the loop.

The same export (``loop.policy_export``) and trainer (``train_policies``) as the loop's policy
stage, on whatever feedback the store holds (imported, collected by the service, or a loop's).
Heavy libraries are imported inside the command so ``rlhf-persona --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Train per-segment policies from a feedback store.", no_args_is_help=True)


@app.command("train")
def train(
    config: Path = typer.Argument(..., help="Experiment config YAML (its policy: section)."),
    overrides: list[str] | None = typer.Option(None, "--set", help="Override: KEY.SUB=VALUE."),
    db: str | None = typer.Option(
        None, "--db", help="Feedback store URL / SQLite path (default: the config's store)."
    ),
    segmenter: Path | None = typer.Option(
        None,
        help="Saved segmenter whose cards give the persona texts (default "
        "RUN_DIR/segmenter/RUN if there); segments are the store's current assignments.",
    ),  # fmt: skip
    reward: Path | None = typer.Option(
        None,
        help="online algorithms (grpo, rloo, ppo): a saved reward model folder scoring "
        "the sampled replies.",
    ),
    init_from: Path | None = typer.Option(
        None, help="A previous registry: adapters of the same name continue from there."
    ),
    out: Path | None = typer.Option(None, help="Registry folder (default RUN_DIR/policy)."),
    round_: int = typer.Option(0, "--round", min=0, help="Round number kept in the manifest."),
) -> None:
    """Train the global baseline and one policy per segment (config's algorithm and strategy)
    on the store's feedback; the registry is what `serve --policy-registry` serves."""
    from rich.console import Console

    from rlhf_persona.config import load_config
    from rlhf_persona.errors import UserError
    from rlhf_persona.feedback import FeedbackStore
    from rlhf_persona.policy.algorithms import ALGORITHMS

    cfg = load_config(config, overrides)
    online = ALGORITHMS.get(cfg.policy.algorithm).online
    if online and reward is None:
        raise UserError(f"policy.algorithm {cfg.policy.algorithm} trains online: pass --reward "
                        "DIR (a saved reward model, e.g. from `reward train`)")  # fmt: skip
    store = FeedbackStore.from_config(cfg.store, cfg.run_dir, url=db, must_exist=True)
    from rlhf_persona.loop import policy_export  # noqa: E402 (TRL loads after the checks)
    from rlhf_persona.policy import AdapterRegistry, train_policies

    reward_fn = _reward_fn(reward) if online else None
    with store:
        assignments = store.current_segments()
        data = policy_export(store, cfg, assignments)
    if len(data) == 0:
        raise UserError(f"{store.url}: no {cfg.policy.algorithm} training rows in the store")
    registry = train_policies(
        cfg.policy, cfg.models.policy, data, _cards(cfg, segmenter), out or cfg.run_dir / "policy",
        reward_fn=reward_fn, round=round_, device=cfg.models.device, bf16=cfg.models.bf16,
        cache_dir=cfg.models.cache_dir, seed=cfg.run.seed,
        init_from=AdapterRegistry.load(init_from) if init_from else None,
    )  # fmt: skip
    console = Console()
    for info in registry.adapters.values():
        console.print(f"  {info.name:12s} segments {info.segments} rows {info.data_size} "
                      f"steps {info.steps} ({info.train_s:.0f} s)",
                      highlight=False)  # fmt: skip
    console.print(f"registry: {registry.root}", highlight=False)


def _cards(cfg, segmenter: Path | None) -> dict[int, str]:
    from rlhf_persona.errors import UserError
    from rlhf_persona.segmentation import Segmenter

    folder = segmenter or cfg.run_dir / "segmenter" / cfg.run.name
    if not (folder / "segmenter.json").is_file():
        if segmenter is not None:
            raise UserError(f"--segmenter {segmenter}: not a saved segmenter (no segmenter.json)")
        return {}
    return {c.segment_id: c.persona_text for c in Segmenter.load(folder).cards_}


def _reward_fn(path: Path):
    from rlhf_persona.errors import UserError
    from rlhf_persona.reward import load, make_reward_fn, reward_kind

    if not path.is_dir() or reward_kind(path) is None:
        raise UserError(f"--reward {path}: not a saved reward model folder")
    return make_reward_fn(load(path))
