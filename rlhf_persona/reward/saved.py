"""Saved reward models of every kind: which kind a folder holds, and one ``load`` for all.

``load(path)`` is what serving's best-of-n, ``policy train --reward`` and scripts call, whatever
wrote the folder: ``RewardModel.save`` (any strategy), ``UserLevelReward.save`` or
``FeatureReward.save``. The kind is read from the marker file each ``save`` writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlhf_persona.errors import UserError

#: The file that marks each kind of saved reward model, in the order they are looked for (a
#: user-level reward saved over a segment model holds both its file and the base model's).
REWARD_FILES = {
    "user_level": "user_level.json",  # reward.user_level.UserLevelReward.save
    "reward_model": "reward_model.json",  # reward.model.RewardModel.save (any strategy)
    "feature_reward": "feature_reward.json",  # reward.light.FeatureReward.save
}


def reward_kind(path: str | Path) -> str | None:
    """Which kind of saved reward model the folder holds (a ``REWARD_FILES`` key), or None."""
    return next((k for k, f in REWARD_FILES.items() if (Path(path) / f).is_file()), None)


def load(path: str | Path, cache_dir: Path | None = None) -> Any:
    """The saved reward model in folder ``path``, of whichever kind it is."""
    kind = reward_kind(path)
    if kind == "user_level":
        from rlhf_persona.reward.user_level import UserLevelReward

        return UserLevelReward.load(path, cache_dir=cache_dir)
    if kind == "reward_model":
        from rlhf_persona.reward.model import load_reward_model

        return load_reward_model(path)
    if kind == "feature_reward":
        from rlhf_persona.reward.light import FeatureReward

        return FeatureReward.load(path)
    files = ", ".join(REWARD_FILES.values())
    raise UserError(f"{path}: not a saved reward model (none of {files})")
