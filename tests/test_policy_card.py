"""Adapter folders name their base model portably and carry a filled model card."""

from __future__ import annotations

import json

import yaml

from rlhf_persona.config import PolicyConfig
from rlhf_persona.policy.card import fix_base_reference, portable_base, write_card
from rlhf_persona.policy.registry import AdapterInfo


def test_base_reference_is_a_hub_id_a_spec_or_a_relative_path(tmp_path):
    adapter = tmp_path / "run" / "round_0" / "policy" / "adapters" / "segment_0"
    adapter.mkdir(parents=True)
    local = tmp_path / "models" / "my-base"
    local.mkdir(parents=True)
    assert portable_base("Qwen/Qwen2.5-0.5B-Instruct", adapter) == "Qwen/Qwen2.5-0.5B-Instruct"
    assert portable_base("embedded:tiny", adapter) == "embedded:tiny"
    relative = portable_base(str(local), adapter)
    assert relative == "../../../../../models/my-base"
    assert (adapter / relative).resolve() == local.resolve()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "/root/.cache/x/embedded-tiny-1234", "r": 8})
    )
    fix_base_reference(adapter, "embedded:tiny")
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config == {"base_model_name_or_path": "embedded:tiny", "r": 8}


def test_card_names_segment_persona_data_metrics_and_hub_base(tmp_path):
    info = AdapterInfo("segment_3", "Qwen/Qwen2.5-0.5B-Instruct", "adapters/segment_3", [3], 42,
                       {"loss": 0.25, "rewards/margins": 1.5, "loss_curve": [0.7, 0.25]},
                       12.5, 20)  # fmt: skip
    cfg = PolicyConfig(algorithm="kto", lora_r=4)
    path = write_card(tmp_path, info, cfg, {3: "They like short replies with emoji."}, round=2)
    text = path.read_text()
    meta = yaml.safe_load(text.split("---")[1])
    assert meta["base_model"] == "Qwen/Qwen2.5-0.5B-Instruct" and meta["library_name"] == "peft"
    assert "kto" in meta["tags"]
    assert "They like short replies with emoji." in text and "42 training rows" in text
    assert "| rewards/margins | 1.5 |" in text and "LoRA r=4" in text and "round 2" in text
    assert "AutoPeftModelForCausalLM" in text
