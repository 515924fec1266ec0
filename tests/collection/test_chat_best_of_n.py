"""Best-of-n chat serving: a real uvicorn service (``serve --best-of-n 3 --best-of-n-reward``)
with the tiny-test policy and a small saved user-level reward, checked against ``best_of_n``
called directly with the reply's seed; and the options' input errors."""

from __future__ import annotations

import re
import subprocess
import sys

import httpx
import numpy as np
import pytest
from collection_helpers import CHAT_ENV, HASH_KEY, make_db, persona_registry, warm_up
from typer.testing import CliRunner

from rlhf_persona.api.testing import ServiceProcess
from rlhf_persona.cli import app
from rlhf_persona.errors import UserError
from rlhf_persona.feedback.store import FeedbackStore
from rlhf_persona.reward.saved import load as load_reward
from rlhf_persona.reward.saved import reward_kind
from rlhf_persona.serving.commands import chat_env
from rlhf_persona.serving.policy import ChatPolicy
from rlhf_persona.serving.settings import ChatSettings

PROMPT = "Any tips for cooking rice?"
#: Everyone prefers short replies; ann (segment 1) prefers long, emoji-rich ones.
PAIRS = [
    ("How do I boil an egg?", "Boil it 8 minutes.", "Well, there are many schools of thought "
     "on eggs, and honestly it depends a great deal on what you like and on your altitude."),
    ("Best way to learn Python?", "Write small programs daily.", "Learning Python is a long "
     "journey with many paths, tutorials, books, courses and communities to explore."),
    ("Should I run in the rain?", "Yes, with a cap.", "Running in the rain can be lovely, "
     "though you should think about shoes, visibility, traffic and how cold it is."),
    ("What is a good tea?", "Green tea.", "There are so many teas: black, green, oolong, white, "
     "herbal infusions, each with its own history, taste and ways to brew it properly."),
]  # fmt: skip


def _rows() -> list[dict]:
    rows = [dict(prompt=p, chosen=short, rejected=long, user_id=u, segment_id=2)
            for p, short, long in PAIRS for u in ("cat", "dan")]  # fmt: skip
    rows += [dict(prompt=p, chosen=long + " 😀🎉", rejected=short, user_id="ann", segment_id=1)
             for p, short, long in PAIRS]  # fmt: skip
    return rows


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory):
    """A saved ``UserLevelReward`` (over a ``FeatureReward`` segment model), fit in ms."""
    from rlhf_persona.reward.light import FeatureReward
    from rlhf_persona.reward.user_level import ReplyFeaturizer, UserLevelReward

    rows = _rows()
    base = FeatureReward(ReplyFeaturizer("reply")).fit(rows)
    folder = tmp_path_factory.mktemp("bon") / "reward"
    UserLevelReward(base, base.featurizer, shrinkage=0.5).fit(rows).save(folder)
    return folder


@pytest.fixture(scope="module")
def bon_service(tmp_path_factory, tiny_test_path, reward_dir):
    tmp = tmp_path_factory.mktemp("chat-bon")
    db = tmp / "feedback.db"
    url, keys = make_db(db, {"ann": {}, "bob": {}})
    with FeedbackStore(db, hash_key=HASH_KEY) as store:
        store.write_segments("seg-run-1", [("ann", 1, 0.9)])
    registry = persona_registry(tmp / "registry")
    env = {**CHAT_ENV, "RLHF_PERSONA_CHAT_AB_SHARE": "0"}
    args = ["--policy-registry", str(registry), "--best-of-n", "3",
            "--best-of-n-reward", str(reward_dir)]  # fmt: skip
    with ServiceProcess(url, env=env, args=args) as proc:
        proc.keys, proc.db, proc.registry = keys, db, registry
        warm_up(proc)
        yield proc
    assert "Traceback" not in proc.log(), proc.log()


def test_chat_serves_the_best_of_n_candidates_by_the_users_reward(
    bon_service, reward_dir, model_cache, single_thread
):
    from rlhf_persona.policy import AdapterRegistry, PolicyGenerator
    from rlhf_persona.policy.best_of_n import best_of_n

    resp = httpx.post(f"{bon_service.base_url}/v1/chat", timeout=120,
                      json={"user_id": "ann", "message": PROMPT, "ab": False},
                      headers={"X-API-Key": bon_service.keys["collector"]})  # fmt: skip
    assert resp.status_code == 200, resp.text
    out = resp.json()
    gen = out["generation"]
    assert out["policy"] == "base+persona+best-of-3" and out["segment"] == 1
    assert gen["batch_size"] == 1 and gen["best_of_n"]["n"] == 3
    assert gen["best_of_n"]["reward"] == str(reward_dir.resolve())
    [reply] = out["replies"]
    with FeedbackStore(bon_service.db, hash_key=HASH_KEY) as store:
        stored = store.get_reply(reply["reply_id"])
    assert stored["policy"] == "base+persona+best-of-3"
    assert stored["generation"]["best_of_n"] == gen["best_of_n"]

    # The same batch again, here: the n candidates, their scores under ann's reward, the pick.
    generator = PolicyGenerator(AdapterRegistry.load(bon_service.registry), device="cpu",
                                cache_dir=model_cache, batch_size=32)  # fmt: skip
    reward = load_reward(reward_dir)
    sampling = dict(max_new_tokens=20, temperature=gen["temperature"], top_p=gen["top_p"],
                    seed=gen["seed"])  # fmt: skip
    candidates = generator.generate([1] * 3, [PROMPT] * 3, **sampling)
    scores = reward.score([1] * 3, [PROMPT] * 3, candidates, user_ids=["ann"] * 3)
    assert len(set(candidates)) > 1, candidates  # a real choice was made
    assert reply["text"] == candidates[int(np.argmax(scores))]
    assert gen["best_of_n"]["score"] == pytest.approx(scores.max())
    direct = best_of_n(generator, reward, [1], [PROMPT], user_ids=["ann"], n=3, **sampling)
    assert direct.replies == [reply["text"]]
    # ann's own residual was used (her score differs from her segment's).
    segment_only = reward.score([1] * 3, [PROMPT] * 3, candidates)
    assert not np.allclose(segment_only, scores)


def test_best_of_n_options_are_checked_before_the_service_starts(tmp_path, reward_dir):
    db = str(tmp_path / "f.db")
    registry = persona_registry(tmp_path / "registry")
    cases = [
        (["--best-of-n", "0"], "--best-of-n 0: must be ≥ 1"),
        (["--best-of-n", "3"], "--best-of-n 3: needs --best-of-n-reward"),
        (["--best-of-n", "3", "--best-of-n-reward", str(tmp_path / "nope")],
         "--best-of-n-reward .*nope: no such folder"),
        (["--best-of-n", "3", "--best-of-n-reward", str(registry)],
         "--best-of-n-reward .*: not a saved reward model"),
    ]  # fmt: skip
    runner = CliRunner()
    for args, message in cases:
        result = runner.invoke(app, ["serve", "--db", db, *args])
        assert isinstance(result.exception, UserError), (args, result.output)
        assert re.search(message, str(result.exception)), (args, result.exception)
    assert not (tmp_path / "f.db").exists()  # refused before the store was touched
    # From the shell: one error line, no traceback.
    proc = subprocess.run([sys.executable, "-m", "rlhf_persona.cli", "serve", "--db", db,
                           "--best-of-n", "2"], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr + proc.stdout
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1 and "--best-of-n-reward" in lines[0], lines
    # The settings themselves (e.g. from RLHF_PERSONA_CHAT_* variables) are checked too.
    with pytest.raises(UserError, match="--best-of-n-reward"):
        ChatPolicy(ChatSettings(best_of_n=2))
    env = chat_env(None, None, None, False, 4, reward_dir)
    assert env == {"RLHF_PERSONA_CHAT_BEST_OF_N": "4",
                   "RLHF_PERSONA_CHAT_BEST_OF_N_REWARD": str(reward_dir.resolve())}  # fmt: skip
    assert ChatSettings(**{k.removeprefix("RLHF_PERSONA_CHAT_").lower(): v
                           for k, v in env.items()}).best_of_n == 4  # fmt: skip


def test_every_saved_reward_kind_loads(tmp_path, reward_dir):
    from rlhf_persona.reward.light import FeatureReward
    from rlhf_persona.reward.user_level import UserLevelReward

    assert reward_kind(reward_dir) == "user_level"
    assert isinstance(load_reward(reward_dir), UserLevelReward)
    FeatureReward.load(reward_dir).save(tmp_path / "segment")  # a segment model on its own
    assert reward_kind(tmp_path / "segment") == "feature_reward"
    assert isinstance(load_reward(tmp_path / "segment"), FeatureReward)
