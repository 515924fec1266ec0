"""The algorithm and strategy registries: one table feeds the lookup and the config's validation,
so an algorithm is one module (here a toy one registered from the test) and a registered reward
strategy is accepted by ``reward.strategy``; flat keys of the old ``policy:`` layout still load."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
from datasets import Dataset
from pydantic import Field

from rlhf_persona.config import ConfigError, PolicyConfig, describe_fields, load_config
from rlhf_persona.errors import UserError
from rlhf_persona.feedback import FeedbackStore
from rlhf_persona.loop import policy_export
from rlhf_persona.policy.algorithms import ALGORITHMS, Algorithm, AlgorithmSection


class ToySection(AlgorithmSection):
    legacy_names = {"toy_temperature": "warmth"}
    warmth: float = Field(0.5, gt=0, description="toy: how warm.")


def _toy_train(model, tokenizer, dataset, cfg, output_dir, **_):
    raise AssertionError("not trained here")


@pytest.fixture
def toy():
    """A thumbs-learning algorithm registered for one test; ``online`` for the other data kind."""

    def register(data: str = "thumbs"):
        algo = Algorithm("toy", data, ToySection, ("prompt",), lambda row, tok: row, _toy_train)
        ALGORITHMS.register("toy", algo)
        return algo

    yield register
    ALGORITHMS.unregister("toy")


def test_a_registered_algorithm_is_a_valid_config_with_its_own_section(toy):
    with pytest.raises(ConfigError, match="policy.algorithm: unknown policy algorithm 'toy'"):
        load_config(None, ["policy.algorithm=toy"])
    toy()
    cfg = load_config(None, ["policy.algorithm=toy", "policy.toy.warmth=2"])
    assert cfg.policy.section().warmth == 2.0 and cfg.policy.section("dpo").sft_weight == 0.0
    with pytest.raises(ConfigError, match=r"policy\.toy\.warmth: Input should be greater than 0"):
        load_config(None, ["policy.algorithm=toy", "policy.toy.warmth=-1"])
    with pytest.raises(ConfigError, match=r"policy\.toy\.heat: unknown key"):
        load_config(None, ["policy.algorithm=toy", "policy.toy.heat=1"])
    with pytest.warns(FutureWarning, match=r"policy.toy_temperature is deprecated: set policy.toy"):
        assert PolicyConfig(algorithm="toy", toy_temperature=3).section().warmth == 3.0
    assert ("policy.toy.warmth", "float", 0.5, "toy: how warm.") in describe_fields()


def test_the_loop_exports_the_data_the_algorithm_asks_for(toy, tmp_path):
    with FeedbackStore(tmp_path / "feedback.db") as store:
        store.upsert_user("u1", {}, consent=True)
        store.record_events([
            {"event_id": "t1", "user_id": "u1", "kind": "thumbs", "value": 1, "prompt": "Q?",
             "reply": "Yes."},
            {"event_id": "t2", "user_id": "u1", "kind": "thumbs", "value": -1, "prompt": "Q?",
             "reply": "No."},
        ])  # fmt: skip
        cfg = load_config(None, ["policy.algorithm=dpo"])
        assert {"chosen", "rejected"} <= set(policy_export(store, cfg, {"u1": 0}).column_names)
        toy("thumbs")
        cfg = load_config(None, ["policy.algorithm=toy"])
        thumbs = policy_export(store, cfg, {"u1": 0})
        assert sorted(zip(thumbs["completion"], thumbs["label"], strict=True)) == [
            ("No.", False), ("Yes.", True)
        ]  # fmt: skip


def test_an_online_algorithm_without_a_reward_function_is_refused(toy, tmp_path):
    from rlhf_persona.policy import train_policies

    toy("online")
    rows = Dataset.from_dict({"prompt": ["Q?"], "segment_id": [0]})
    with pytest.raises(UserError, match="policy.algorithm=toy is online: it needs a reward_fn"):
        train_policies(PolicyConfig(algorithm="toy"), "embedded:tiny-test", rows, {}, tmp_path)


def test_the_shipped_configs_use_sections_and_the_old_flat_keys_still_load():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no shipped config uses a deprecated key
        quick = load_config("configs/quickstart.yaml").policy
    with pytest.warns(FutureWarning, match="policy.kto_loss is deprecated: set policy.kto.loss"):
        flat = PolicyConfig(
            algorithm="kto",
            kto_loss="apo_zero_unpaired",
            sft_weight=1.0,
            reference="base",
            batch_size=24,
            beta=0.3,
            learning_rate=1e-3,
        )
    # the flat keys reach every section that declares them (DPO's too); KTO's and the rest match
    assert flat.section("dpo").reference == "base"
    assert {**flat.model_dump(), "dpo": None} == {**quick.model_dump(), "dpo": None}
    with pytest.warns(FutureWarning, match="policy.ppo.num_iterations"):
        ppo = PolicyConfig(algorithm="ppo", num_iterations=2, max_completion_length=9)
    assert (ppo.section().num_iterations, ppo.section("grpo").max_completion_length) == (2, 9)


def test_a_registered_reward_strategy_is_accepted_by_the_config():
    from rlhf_persona.reward import STRATEGIES

    with pytest.raises(ConfigError, match="unknown reward strategy 'toy'.*heads"):
        load_config(None, ["reward.strategy=toy"])
    STRATEGIES.register("toy", object)
    try:
        assert load_config(None, ["reward.strategy=toy"]).reward.strategy == "toy"
    finally:
        STRATEGIES.unregister("toy")


def test_validating_a_config_imports_neither_torch_nor_trl():
    heavy = "('torch', 'trl', 'transformers')"
    code = ("import sys; from rlhf_persona.config import load_config; "
            "load_config('configs/ppo.yaml', ['policy.algorithm=kto']); "
            f"print(sorted(m for m in {heavy} if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
