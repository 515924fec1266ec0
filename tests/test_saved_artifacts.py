"""Saved artifacts: one ``reward.load`` for every kind of saved reward, and one versioned
metadata reader (segmenter, reward model, adapter registry) that names the file and the problem."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rlhf_persona.errors import UserError
from rlhf_persona.metadata import read_meta, stamp
from rlhf_persona.policy import AdapterRegistry

PAIRS = [("Tips?", "Sleep.", "Sleep eight hours, drink water, and walk every day."),
         ("Dinner?", "Soup.", "A warm soup with bread, then fruit for dessert.")]  # fmt: skip


def _rows():
    return [dict(prompt=p, chosen=short, rejected=long, user_id=u, segment_id=0)
            for p, short, long in PAIRS * 3 for u in ("ann", "bob")]  # fmt: skip


def test_reward_load_reads_every_saved_kind(tmp_path):
    from rlhf_persona.reward.light import FeatureReward
    from rlhf_persona.reward.saved import load, reward_kind  # = rlhf_persona.reward.load
    from rlhf_persona.reward.user_level import ReplyFeaturizer, UserLevelReward

    rows = _rows()
    base = FeatureReward(ReplyFeaturizer("reply")).fit(rows)
    base.save(tmp_path / "feature")
    user = UserLevelReward(base, base.featurizer, shrinkage=0.5).fit(rows)
    user.save(tmp_path / "user")
    assert (reward_kind(tmp_path / "feature"), reward_kind(tmp_path / "user")) == (
        "feature_reward", "user_level"
    )  # fmt: skip
    args = ([0, 0], ["Tips?", "Tips?"], ["Sleep.", "Sleep eight hours and walk."])
    for folder, saved in (("feature", base), ("user", user)):
        loaded = load(tmp_path / folder)
        assert type(loaded) is type(saved)
        np.testing.assert_allclose(loaded.score(*args), saved.score(*args))
    with pytest.raises(UserError, match="not a saved reward model .none of user_level.json"):
        load(tmp_path)


def test_read_meta_names_the_file_and_the_problem(tmp_path):
    path = tmp_path / "thing.json"
    with pytest.raises(UserError, match=r"not a saved thing \(no thing.json\)"):
        read_meta(path, "thing", "fmt.thing", 2, "rebuild it")
    path.write_text("{nope")
    with pytest.raises(UserError, match="thing.json: not valid JSON"):
        read_meta(path, "thing", "fmt.thing", 2, "rebuild it")
    path.write_text(json.dumps({**stamp("fmt.thing", 1), "x": 1}))
    with pytest.raises(UserError, match="version 1; .* reads 'fmt.thing' version 2: rebuild it"):
        read_meta(path, "thing", "fmt.thing", 2, "rebuild it")
    assert read_meta(path, "thing", "fmt.thing", 1, "rebuild it")["x"] == 1


def test_adapter_registry_manifests_carry_their_format_and_older_ones_still_load(tmp_path):
    reg = AdapterRegistry(tmp_path / "new", "embedded:tiny-test", 3, "dpo", "adapter")
    manifest = json.loads(reg.save().read_text())
    assert manifest["format"] == "rlhf_persona.adapter_registry" and manifest["format_version"] == 1
    old = {k: v for k, v in manifest.items() if k != "format_version"} | {"format": 1}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "manifest.json").write_text(json.dumps(old))  # as written before
    assert AdapterRegistry.load(tmp_path / "old").round == 3
    (tmp_path / "new" / "manifest.json").write_text(json.dumps({**manifest, "format_version": 9}))
    with pytest.raises(UserError, match="version 9; .*: retrain the policies"):
        AdapterRegistry.load(tmp_path / "new")
