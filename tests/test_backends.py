"""Generation backend selection: vLLM where it can run, transformers otherwise (vLLM is not
installed here and there is no GPU, so every vLLM request must fall back, with a warning)."""

from __future__ import annotations

import importlib.util

import pytest

from rlhf_persona.config import PolicyConfig, load_config
from rlhf_persona.policy import AdapterRegistry, PolicyGenerator
from rlhf_persona.policy.backends import (
    VLLMGenerator,
    make_generator,
    select_backend,
    vllm_missing,
    vllm_trainer_kwargs,
)

NO_VLLM = importlib.util.find_spec("vllm") is None


@pytest.mark.skipif(not NO_VLLM, reason="asserts the fallback of a machine without vllm")
def test_vllm_requests_fall_back_to_transformers_with_a_reason():
    assert "not installed" in vllm_missing()
    assert select_backend("hf") == "hf"
    assert select_backend("auto") == "hf"  # auto: silently the backend that can run
    with pytest.warns(RuntimeWarning, match="vllm package is not installed.*transformers"):
        assert select_backend("vllm", "cuda") == "hf"
    with pytest.raises(ValueError, match="hf, vllm or auto"):
        select_backend("tgi")


def test_vllm_is_chosen_where_it_can_run(monkeypatch):
    """The selection itself: with vLLM runnable, vllm and auto pick it, hf keeps transformers."""
    from rlhf_persona.policy import backends

    monkeypatch.setattr(backends, "vllm_missing", lambda device=None: None)
    assert [select_backend(b, "cuda") for b in ("hf", "vllm", "auto")] == ["hf", "vllm", "vllm"]
    assert vllm_trainer_kwargs(True, "cuda") == {"use_vllm": True, "vllm_mode": "colocate"}
    assert vllm_trainer_kwargs(False, "cuda") == {}


@pytest.mark.skipif(not NO_VLLM, reason="asserts the fallback of a machine without vllm")
def test_a_vllm_config_generates_with_transformers_here(tmp_path, tiny_test_path, single_thread):
    registry = AdapterRegistry(tmp_path, "embedded:tiny-test")
    with pytest.warns(RuntimeWarning, match="generating with transformers"):
        gen = make_generator(registry, "vllm", device="cpu", batch_size=4)
    assert type(gen) is PolicyGenerator and not isinstance(gen, VLLMGenerator)
    assert len(gen.generate(["base"] * 2, ["Hi there", "Tell me more"], max_new_tokens=4)) == 2
    with pytest.warns(RuntimeWarning, match="sampling rollouts with transformers"):
        assert vllm_trainer_kwargs(True, "cpu") == {}


def test_gpu_training_options_reach_the_trainers(tmp_path):
    from transformers import TrainingArguments

    from rlhf_persona.policy.common import trainer_args

    cfg = PolicyConfig(gradient_accumulation_steps=4, lr_scheduler="cosine", warmup_steps=0.1,
                       gradient_checkpointing=True)  # fmt: skip
    args = TrainingArguments(**trainer_args(cfg, tmp_path, "cpu", False, seed=0))
    assert args.gradient_accumulation_steps == 4 and args.lr_scheduler_type == "cosine"
    assert args.warmup_steps == 0.1 and args.gradient_checkpointing
    loaded = load_config(None, ["models.attn_implementation=sdpa", "models.generation_backend=auto",
                                "policy.algorithm=ppo", "policy.grpo.use_vllm=true"])  # fmt: skip
    assert loaded.models.attn_implementation == "sdpa" and loaded.policy.algorithm == "ppo"
    assert loaded.policy.section("grpo").use_vllm
    from rlhf_persona.config import ConfigError

    with pytest.raises(ConfigError, match="generation_backend"):
        load_config(None, ["models.generation_backend=tgi"])
