"""Policy training (DPO/KTO/GRPO/RLOO/PPO × adapter/prompt), adapter registry and generation.

Everything runs real TRL trainers on the embedded ``tiny-test`` policy with a few steps on tiny
data; two segments with opposite tastes (short + emoji vs long + formal) make the trained
adapters measurably different.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file

from rlhf_persona.config import PolicyConfig
from rlhf_persona.errors import UserError
from rlhf_persona.policy import (
    ALGORITHMS,
    BASE,
    GLOBAL,
    AdapterInfo,
    AdapterRegistry,
    PolicyGenerator,
    Route,
    train_policies,
)

SPEC = "embedded:tiny-test"
PROMPTS = [
    "Can you help me with garlic?",
    "What should I know about budget?",
    "Explain cardio to me.",
    "Give me advice on gardening.",
]
SHORT = "Sure 😀 try garlic 🎉"
LONG = (
    "Certainly. Regarding this matter, one should consider the details carefully. "
    "Furthermore, it is advisable to proceed step by step."
)
CARDS = {
    0: "This user prefers short, casual replies with emoji.",
    1: "This user prefers long, formal and detailed replies.",
}


def _rows(segment: int, n: int) -> list[dict]:
    likes, dislikes = (SHORT, LONG) if segment == 0 else (LONG, SHORT)
    rows = []
    for i in range(n):
        prompt = PROMPTS[i % len(PROMPTS)]
        liked = i % 2 == 0  # KTO rows alternate thumbs up (liked reply) / down (disliked)
        rows.append(
            {
                "prompt": prompt,
                "chosen": likes,
                "rejected": dislikes,
                "completion": likes if liked else dislikes,
                "label": liked,
                "user_id": f"u{segment}-{i % 3}",
                "segment_id": segment,
            }
        )
    return rows


@pytest.fixture(scope="module", autouse=True)
def _policy_built(tiny_test_path):
    """Build (or find in the cache) ``embedded:tiny-test`` once, before any test here; run on
    one intra-op thread: for a 2M model it is as fast, and on a busy machine many times faster
    (two OpenMP threads wait on each other at every small matmul)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data() -> Dataset:
    return Dataset.from_list(_rows(0, 8) + _rows(1, 8))


def style_reward(prompts, completions, segment_id, **_):
    """Simulated taste: segment 0 likes emoji and brevity, segment 1 likes length."""
    out = []
    for reply, seg in zip(completions, segment_id, strict=True):
        emoji = sum(ch in "😀😊👍🎉🔥✨🙂💡🚀❤" for ch in reply)
        out.append(emoji - len(reply) / 40 if seg == 0 else len(reply) / 40 - emoji)
    return out


def _cfg(**kw) -> PolicyConfig:
    group = dict(num_generations=2, max_completion_length=6)
    base = dict(steps=2, batch_size=2, max_length=64, grpo=group, rloo=group,
                ppo=dict(max_completion_length=6))  # fmt: skip
    return PolicyConfig(**{**base, **kw})


def _lora_b_norm(path) -> float:
    """Norm of the LoRA B matrices: exactly 0 at init, > 0 once training moved the adapter."""
    weights = load_file(str(path / "adapter_model.safetensors"))
    return float(sum(w.float().norm() for k, w in weights.items() if "lora_B" in k))


CASES = [
    ("dpo", "adapter"),
    ("kto", "adapter"),
    ("grpo", "adapter"),
    ("rloo", "adapter"),
    ("ppo", "adapter"),
    ("dpo", "prompt"),
    ("kto", "prompt"),
    ("grpo", "prompt"),
    ("rloo", "prompt"),
    ("ppo", "prompt"),
]


@pytest.mark.parametrize(("algorithm", "strategy"), CASES)
def test_train_save_load(algorithm, strategy, data, tmp_path):
    # The global baseline is trained in one case only, to keep the suite fast.
    with_global = (algorithm, strategy) == ("dpo", "adapter")
    cfg = _cfg(algorithm=algorithm, strategy=strategy, train_global=with_global)
    reg = train_policies(
        cfg, SPEC, data, CARDS, tmp_path / "round0", reward_fn=style_reward, round=3
    )

    expected = {"adapter": {"segment_0", "segment_1"}, "prompt": {"prompt"}}[strategy]
    assert set(reg.adapters) == expected | ({GLOBAL} if with_global else set())
    for name, info in reg.adapters.items():
        path = reg.adapter_path(name)
        assert (path / "adapter_config.json").is_file()
        assert _lora_b_norm(path) > 0, f"{name}: adapter weights never moved"
        assert info.steps == 2 and len(info.metrics["loss_curve"]) == 2
        assert info.base_model == SPEC
    sizes = {n: i.data_size for n, i in reg.adapters.items()}
    assert sizes.get("segment_0", 8) == 8 and sizes.get("prompt", 16) == 16

    loaded = AdapterRegistry.load(tmp_path / "round0")
    assert loaded.to_dict() == reg.to_dict()
    assert loaded.round == 3 and loaded.algorithm == algorithm and loaded.segments == [0, 1]
    if strategy == "prompt":
        assert loaded.route(1) == Route("prompt", CARDS[1])
    else:
        assert loaded.route(0) == Route("segment_0")

    replies = PolicyGenerator(loaded).generate([0, 1, BASE], PROMPTS[:3], max_new_tokens=8)
    assert len(replies) == 3 and all(isinstance(r, str) for r in replies)


def test_registry_manifest_roundtrip_and_routing(tmp_path):
    reg = AdapterRegistry(tmp_path, "embedded:tiny-test", round=2, algorithm="kto")
    reg.add_adapter(
        AdapterInfo("global", SPEC, "adapters/global", [0, 1, 2], 30, {"loss": 0.5}, 1.5, 4)
    )
    reg.add_adapter(AdapterInfo("segment_1", "other/model", "adapters/segment_1", [1], 9))
    reg.set_route(GLOBAL, Route(GLOBAL))
    reg.set_route(np.int64(1), Route("segment_1", "persona"))
    reg.save()

    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["round"] == 2 and manifest["adapters"]["global"]["data_size"] == 30
    assert manifest["routes"]["1"] == {"adapter": "segment_1", "system_prompt": "persona"}

    loaded = AdapterRegistry.load(tmp_path)
    assert loaded.to_dict() == reg.to_dict()
    assert loaded.route("1") == Route("segment_1", "persona")
    assert loaded.route(7) == Route(GLOBAL)  # a segment with no policy gets the global one
    assert loaded.route(BASE) == Route(None)
    assert loaded.base_model_of(loaded.route(1)) == "other/model"
    with pytest.raises(UserError, match="unknown policy key"):
        loaded.route("nonsense")
    with pytest.raises(ValueError, match="not in the registry"):
        reg.set_route(3, Route("segment_3"))
    with pytest.raises(UserError, match="no manifest.json"):
        AdapterRegistry.load(tmp_path / "missing")
    (tmp_path / "manifest.json").write_text('{"round": 1}')
    with pytest.raises(UserError, match="malformed manifest"):
        AdapterRegistry.load(tmp_path)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> AdapterRegistry:
    """Two segment adapters trained (DPO) towards opposite styles (no global baseline)."""
    cfg = _cfg(steps=5, batch_size=4, learning_rate=5e-3, lora_r=8, train_global=False)
    # Segment 2 has a single row (< min_rows): no adapter; with no global one, the base serves it.
    rows = data.add_item({**_rows(0, 1)[0], "segment_id": 2})
    return train_policies(cfg, SPEC, rows, CARDS, tmp_path_factory.mktemp("trained"))


@pytest.fixture(scope="module")
def generator(trained) -> PolicyGenerator:
    return PolicyGenerator(trained, batch_size=3).load_all()


def test_adapters_learn_their_segments_preference(generator):
    """DPO moved each adapter toward its own segment's side of the pairs."""
    n = len(PROMPTS)
    margins = {}
    for seg in (0, 1):
        short = generator.logprobs([seg] * n, PROMPTS, [SHORT] * n)
        long_ = generator.logprobs([seg] * n, PROMPTS, [LONG] * n)
        margins[seg] = np.mean([s.sum() - lo.sum() for s, lo in zip(short, long_, strict=True)])
    base_short = generator.logprobs([BASE] * n, PROMPTS, [SHORT] * n)
    base_long = generator.logprobs([BASE] * n, PROMPTS, [LONG] * n)
    base_margin = np.mean([s.sum() - lo.sum() for s, lo in zip(base_short, base_long, strict=True)])
    assert margins[0] > base_margin > margins[1]


def test_generation_grouped_by_segment(generator, trained):
    assert trained.route(2) == Route(None) and set(trained.adapters) == {"segment_0", "segment_1"}
    keys = [0, 1, 0, 1, 2, BASE]
    prompts = [PROMPTS[0], PROMPTS[0], PROMPTS[1], PROMPTS[1], PROMPTS[2], PROMPTS[2]]
    kw = dict(max_new_tokens=10, temperature=0.8, seed=7)
    mixed = generator.generate(keys, prompts, **kw)
    assert generator.generate(keys, prompts, **kw) == mixed  # same seed → same replies
    # Requests are grouped per adapter: a segment's replies do not depend on other segments'.
    assert generator.generate([0, 0], [PROMPTS[0], PROMPTS[1]], **kw) == [mixed[0], mixed[2]]
    assert generator.generate([1, 1], [PROMPTS[0], PROMPTS[1]], **kw) == [mixed[1], mixed[3]]

    greedy = generator.generate(
        [0, 1] * 4, [p for p in PROMPTS for _ in (0, 1)], temperature=0, max_new_tokens=10
    )
    assert greedy[0::2] != greedy[1::2], "segment adapters should answer differently"
    by_user = generator.generate_for_users(
        ["ann", "bob"], PROMPTS[:2], {"ann": 0, "bob": 1}, temperature=0, max_new_tokens=10
    )
    assert by_user == [greedy[0], greedy[3]]
    assert generator.label(0) == "segment_0" and generator.label(9) == BASE


def test_kl_from_base(generator):
    prompts = PROMPTS[:3]
    replies = generator.generate([0, 0, 0], prompts, max_new_tokens=12, seed=1)
    kl = generator.kl_from_base([0, 0, 0], prompts, replies)
    assert kl.shape == (3,) and (kl > 0).all()
    assert np.allclose(generator.kl_from_base([BASE] * 3, prompts, replies), 0.0, atol=1e-6)


def test_generator_is_thread_safe(generator):
    args = ([0, 1, 0], PROMPTS[:3])
    expected = generator.generate(*args, temperature=0, max_new_tokens=10)
    results = []

    def worker(keys):
        results.append(generator.generate(keys, PROMPTS[:3], temperature=0, max_new_tokens=10))

    threads = [threading.Thread(target=worker, args=([0, 1, 0],)) for _ in range(2)]
    threads += [threading.Thread(target=worker, args=([1, 0, 1],)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(expected) == 2 and len(results) == 4


def test_strategy_plans_honour_segment_models():
    from rlhf_persona.policy import STRATEGIES
    from rlhf_persona.policy.strategies import GlobalStrategy  # trained beside any strategy

    overrides = {1: "other/model"}
    adapter = STRATEGIES["adapter"]().plan([0, 1, 2], CARDS, SPEC, overrides)
    assert [(j.name, j.base_model, j.segments) for j in adapter.jobs] == [
        ("segment_0", SPEC, [0]),
        ("segment_1", "other/model", [1]),
        ("segment_2", SPEC, [2]),
    ]
    prompt = STRATEGIES["prompt"]().plan([0, 1, 2], CARDS, SPEC, overrides)
    assert [(j.name, j.base_model, j.segments) for j in prompt.jobs] == [
        ("prompt", SPEC, [0, 2]),
        ("prompt_1", "other/model", [1]),
    ]
    assert prompt.jobs[0].system_prompts == {0: CARDS[0], 2: None}
    assert prompt.routes[1] == Route("prompt_1", CARDS[1])
    glob = GlobalStrategy().plan([0, 1, 2], CARDS, SPEC, overrides)
    assert [(j.name, j.base_model) for j in glob.jobs] == [("global", SPEC)]


def test_segment_base_model_override(data, tmp_path):
    """A segment given its own base model is trained and served on that model."""
    from rlhf_persona.models import load_causal_lm

    model, tok = load_causal_lm(SPEC)
    other = tmp_path / "other_base"  # a second base model, named by path
    model.save_pretrained(other)
    tok.save_pretrained(other)

    cfg = _cfg(train_global=False, segment_models={1: str(other)})
    reg = train_policies(cfg, SPEC, data, CARDS, tmp_path / "reg")
    assert reg.base_model_of(reg.route(0)) == SPEC
    assert reg.base_model_of(reg.route(1)) == str(other)
    assert reg.route(0).adapter != reg.route(1).adapter

    gen = PolicyGenerator(AdapterRegistry.load(reg.root))
    assert len(gen.generate([0, 1], PROMPTS[:2], max_new_tokens=6)) == 2
    assert set(gen._backends) == {SPEC, str(other)}


def test_warm_start_and_init_from(data, trained, tmp_path):
    cfg = _cfg(steps=1, train_global=False, warm_start_steps=1)
    seg0 = data.filter(lambda r: r["segment_id"] == 0)
    reg = train_policies(cfg, SPEC, seg0, {}, tmp_path / "r1", round=1, init_from=trained)
    assert set(reg.adapters) == {"segment_0"}
    for name in reg.adapters:
        files = sorted(p.name for p in reg.adapter_path(name).iterdir())
        peft = ["README.md", "adapter_config.json", "adapter_model.safetensors"]
        assert files == [*peft, "chat_template.jinja", "tokenizer.json", "tokenizer_config.json"]
        # Continued from the previous round's adapter, not from zero.
        assert _lora_b_norm(reg.adapter_path(name)) > 0.5 * _lora_b_norm(trained.adapter_path(name))


def test_bad_inputs_are_named(data, tmp_path):
    with pytest.raises(UserError, match="needs a reward_fn"):
        train_policies(_cfg(algorithm="grpo"), SPEC, data, CARDS, tmp_path)
    with pytest.raises(UserError, match="lacks.*'completion'"):
        train_policies(_cfg(algorithm="kto"), SPEC, data.remove_columns("completion"), {}, tmp_path)
    with pytest.raises(UserError, match="multiple of policy.rloo.num_generations"):
        cfg = _cfg(algorithm="rloo", batch_size=6, rloo={"num_generations": 4})
        train_policies(cfg, SPEC, data, CARDS, tmp_path, reward_fn=style_reward)


def test_generated_replies_are_cleaned_of_nul_characters():
    """A byte-level model can emit NUL; the store rejects it, so replies never carry one."""
    from rlhf_persona.policy.generate import clean_reply

    assert clean_reply("  Sure\x00, here\x00 it is \n") == "Sure, here it is"


def _prompt_ids(tokenizer, n: int) -> list[list[int]]:
    from rlhf_persona.policy.common import render_prompt

    texts = [render_prompt(tokenizer, PROMPTS[i % len(PROMPTS)] * (1 + i % 3), None)
             for i in range(n)]  # fmt: skip
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def _left_padded_prompts(tokenizer, n: int) -> dict:
    from rlhf_persona.policy.common import pad_left

    return pad_left(_prompt_ids(tokenizer, n), tokenizer.pad_token_id, "cpu")


def _rows_ending_at_different_steps(model, tok, stops: list[int]) -> tuple[dict, list[int]]:
    """A batch whose greedy rows stop at different steps on any build of the tiny model (one
    built on another CPU may write no end-of-turn within 24 tokens, or one reply to every
    prompt): prompt i carries the first i % 4 tokens of its own greedy reply, and a token of
    the first reply (not among its first four) becomes a stop too."""
    from rlhf_persona.policy.common import pad_left

    ids = _prompt_ids(tok, 12)
    enc = pad_left(ids, tok.pad_token_id, "cpu")
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=24, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=stops)  # fmt: skip
    replies = out[:, enc["input_ids"].shape[1] :].tolist()
    extra = next(t for p, t in enumerate(replies[0]) if p >= 4 and replies[0].index(t) == p
                 and t not in (*stops, tok.pad_token_id))  # fmt: skip
    own = zip(ids, replies, strict=True)
    prompts = [ids + reply[: i % 4] for i, (ids, reply) in enumerate(own)]
    return pad_left(prompts, tok.pad_token_id, "cpu"), [*stops, extra]


def test_shrinking_batch_decodes_as_generate_does(tiny_test_path):
    """Greedy, the loop that drops finished rows gives ``generate``'s tokens for every row,
    also once rows of different lengths have left the batch; sampling is reproducible."""
    from rlhf_persona.policy.common import load_base, stop_token_ids
    from rlhf_persona.policy.decode import sample_shrinking

    model, tok = load_base(SPEC, "cpu", False, tiny_test_path.parent, None)
    enc, stops = _rows_ending_at_different_steps(model, tok, stop_token_ids(model, tok))
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=24, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=stops)  # fmt: skip
    expected = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    tokens = sample_shrinking(model, enc["input_ids"], enc["attention_mask"], 24, 0.0, 1.0, stops)
    assert tok.batch_decode(tokens, skip_special_tokens=True) == expected
    lengths = [len(t) for t in tokens]
    assert min(lengths) < 24 and len(set(lengths)) > 1  # rows really left the batch early
    assert all(t[-1] in stops for t in tokens if len(t) < 24)  # each ends on its stop token

    def sampled(seed: int) -> list[list[int]]:
        torch.manual_seed(seed)
        return sample_shrinking(model, enc["input_ids"], enc["attention_mask"], 24, 1.0, 0.9,
                                stops)  # fmt: skip

    assert sampled(3) == sampled(3) and sampled(3) != sampled(4)


def test_top_p_keeps_the_smallest_nucleus_and_penalties_go_to_generate():
    from transformers import GenerationConfig

    from rlhf_persona.policy.decode import next_tokens, shrinking_applies

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]] * 2000))
    torch.manual_seed(0)
    picked = next_tokens(logits, 1.0, 0.7)  # nucleus {0, 1}: 0.5 < 0.7 ≤ 0.8
    assert set(picked.tolist()) == {0, 1}
    assert abs((picked == 0).float().mean().item() - 0.5 / 0.8) < 0.04
    assert set(next_tokens(logits, 1.0, 0.4).tolist()) == {0}
    assert (next_tokens(logits[:3], 0.0, 1.0) == 0).all()
    assert shrinking_applies(GenerationConfig())
    assert not shrinking_applies(GenerationConfig(repetition_penalty=1.1))
    assert not shrinking_applies(GenerationConfig(no_repeat_ngram_size=3))


def test_adapter_of_another_model_is_a_clear_error(tmp_path, tiny_test_path):
    """Loading an adapter trained on a model of other shapes (e.g. a run resumed after an
    embedded model was rebuilt) names the adapter and what to do, not PEFT's size dump."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhf_persona.policy.common import load_adapter, load_base

    torch.manual_seed(0)
    other = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2))  # fmt: skip
    lora = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    get_peft_model(other, lora).save_pretrained(tmp_path / "adapter")
    model, _ = load_base(str(tiny_test_path))
    with pytest.raises(UserError, match="does not fit the base model .*Start a new run"):
        load_adapter(model, tmp_path / "adapter", spec="embedded:tiny-test")


@pytest.mark.parametrize("reference", ["previous", "base"])
@pytest.mark.parametrize("algorithm", ["dpo", "kto"])
def test_reference_of_a_continued_adapter(algorithm, reference, data, trained, tmp_path):
    """Training a saved adapter further, TRL's reference is a frozen copy of it ("previous");
    ``policy.<algorithm>.reference: base`` makes that copy the identity, i.e. the base model."""
    from rlhf_persona.policy.common import load_adapter, load_base
    from rlhf_persona.policy.train import _format

    module = ALGORITHMS.get(algorithm)
    model, tokenizer = load_base(SPEC, "cpu", False, None)
    model = load_adapter(model, trained.adapter_path("segment_0"), trainable=True, spec=SPEC)
    rows = _format(data.filter(lambda r: r["segment_id"] == 0), module, tokenizer)
    cfg = _cfg(steps=1, **{algorithm: {"reference": reference}})
    trainer = module.train(model, tokenizer, rows, cfg, tmp_path, device="cpu", bf16=False, seed=0)
    ref_b = [p for n, p in trainer.model.named_parameters() if ".ref." in n and "lora_B" in n]
    assert ref_b  # TRL made the frozen copy
    norm = float(sum(p.detach().norm() for p in ref_b))
    assert (norm == 0.0) if reference == "base" else (norm > 0.0)


def test_trainer_settings_carry_the_configured_adam_epsilon(tmp_path):
    from transformers import TrainingArguments

    from rlhf_persona.policy.common import trainer_args

    cfg = PolicyConfig(adam_epsilon=1e-3, learning_rate=1e-3)
    args = TrainingArguments(**trainer_args(cfg, tmp_path, "cpu", False, seed=0))
    assert (args.adam_epsilon, args.learning_rate) == (1e-3, 1e-3)
    assert (
        TrainingArguments(**trainer_args(PolicyConfig(), tmp_path, "cpu", False, 0)).adam_epsilon
        == 1e-8
    )


def _one_step(module, data, out_dir, **cfg):
    """The algorithm's trainer after one step of batch 4 from the fresh base (same weights and
    batch whatever ``cfg`` says), for comparing first-step losses."""
    from rlhf_persona.policy.common import load_base
    from rlhf_persona.policy.train import _format

    model, tokenizer = load_base(SPEC, "cpu", False, None)
    rows = _format(data, module, tokenizer)
    return module.train(model, tokenizer, rows, _cfg(steps=1, batch_size=4, **cfg), out_dir,
                        device="cpu", bf16=False, seed=0)  # fmt: skip


@pytest.mark.parametrize("algorithm", ["dpo", "kto"])
def test_sft_weight_adds_the_liked_replies_nll(algorithm, data, tmp_path):
    """The first step sees the same weights and batch with and without the term, so its loss
    grows by exactly sft_weight × the liked replies' mean per-token NLL (KTO logs that NLL)."""
    module = ALGORITHMS.get(algorithm)
    first = {
        weight: _one_step(
            module, data, tmp_path / str(weight), **{algorithm: {"sft_weight": weight}}
        ).state.log_history[0]
        for weight in (0.0, 2.0)
    }
    added = first[2.0]["loss"] - first[0.0]["loss"]
    assert added > 0.5  # tiny-test's per-token NLL of unseen text is several nats
    if algorithm == "kto":
        assert added == pytest.approx(2.0 * first[2.0]["nll/chosen"], rel=1e-4)


def test_desirable_nll_counts_completion_tokens_of_liked_rows_only():
    from rlhf_persona.policy.algorithms.kto import desirable_nll

    labels = torch.tensor([[-100, -100, 5, 6], [-100, 7, 8, 9]])  # row 0 liked, row 1 not
    log_probs = torch.tensor([[-9.0, -1.0, -3.0], [-2.0, -4.0, -8.0]], requires_grad=True)
    assert desirable_nll(labels, log_probs, [True, False]).item() == pytest.approx(2.0)
    assert desirable_nll(labels, log_probs, [True, True]).item() == pytest.approx(18 / 5)
    none = desirable_nll(labels, log_probs, [False, False])
    assert none.item() == 0.0 and none.requires_grad


def test_sft_weight_is_a_key_of_the_offline_algorithms_only():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="grpo.sft_weight: unknown key"):
        PolicyConfig(algorithm="grpo", grpo={"sft_weight": 0.5})
    assert PolicyConfig(algorithm="kto", kto={"sft_weight": 0.5}).section().sft_weight == 0.5


def test_kto_loss_with_z_at_zero_matches_kto_while_the_policy_is_its_reference(data, tmp_path):
    """At the first step the LoRA adapter is still zero, so the policy is its reference, TRL's
    estimate of the reference point z is 0, and apo_zero_unpaired (z fixed at 0) gives KTO's
    loss — without the forward passes that estimate z."""
    kto = ALGORITHMS.get("kto")
    first, estimates_z = {}, {}
    for loss in ("kto", "apo_zero_unpaired"):
        trainer = _one_step(kto, data, tmp_path / loss, kto={"loss": loss, "sft_weight": 1.0})
        first[loss], estimates_z[loss] = trainer.state.log_history[0], trainer.calculate_KL
    assert estimates_z == {"kto": True, "apo_zero_unpaired": False}
    assert first["kto"]["kl"] == 0.0
    assert first["apo_zero_unpaired"]["loss"] == pytest.approx(first["kto"]["loss"], rel=1e-5)


def short_reward(prompts, completions, segment_id, **_):
    """A planted preference: shorter replies score higher."""
    return [-len(c) / 20 for c in completions]


def _ppo_run(data, tmp_path, **cfg):
    from rlhf_persona.policy.algorithms.ppo import PPOSection
    from rlhf_persona.policy.common import load_base
    from rlhf_persona.policy.train import _format

    ppo = ALGORITHMS.get("ppo")
    model, tokenizer = load_base(SPEC, "cpu", False, None)
    rows = _format(data.filter(lambda r: r["segment_id"] == 0), ppo, tokenizer)
    own = dict(max_completion_length=12, num_iterations=2)
    own.update({k: cfg.pop(k) for k in list(cfg) if k in PPOSection.model_fields})
    base = dict(algorithm="ppo", steps=12, batch_size=8, learning_rate=5e-3, lora_r=8, ppo=own)
    return ppo.train(model, tokenizer, rows, PolicyConfig(**{**base, **cfg}), tmp_path,
                     device="cpu", bf16=False, seed=0, reward_fn=short_reward)  # fmt: skip


def test_ppo_learns_a_planted_preference_with_its_value_head(data, tmp_path):
    """Reward rises and the value head learns the returns; β holds the policy near the base
    (measured: lr 3e-3, the last steps' KL with β = 2 at 0.02-0.18 of its value with β = 0,
    over run seeds 0-2 and two builds of the tiny model; with β = 1 up to 0.41).

    The tiny model's weights differ by machine (float kernels), so the figures are chosen to
    hold over run seeds 0-4 here: at lr 1e-2 reward gains 1.2-2.4 (asked > 0.5); the value
    loss is noisy as the policy moves (one step may exceed the first), its median over steps
    3-12 stays below half the first (at lr 5e-3 seed 0 gained only 0.24 on one machine)."""
    fast = _ppo_run(data, tmp_path / "fast", beta=0.0, learning_rate=1e-2).state.log_history
    free = _ppo_run(data, tmp_path / "free", beta=0.0, learning_rate=3e-3).state.log_history
    held = _ppo_run(data, tmp_path / "held", beta=2.0, learning_rate=3e-3).state.log_history

    def mean(rows, key):
        return float(np.mean([r[key] for r in rows]))

    assert len(fast) == 12 and fast[0]["kl"] == pytest.approx(0.0, abs=1e-4)
    assert mean(fast[-3:], "reward") > mean(fast[:3], "reward") + 0.5
    assert np.median([r["value_loss"] for r in fast[2:]]) < 0.5 * fast[0]["value_loss"]
    assert mean(held[-4:], "kl") < 0.3 * mean(free[-4:], "kl")
    assert all(np.isfinite(r["loss"]) for r in fast + free + held)


def test_gae_and_the_kl_penalty_per_token():
    from rlhf_persona.policy.ppo_trainer import gae, whiten

    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.5, 0.5, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # the reply ended at token 3
    adv, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    # λ = 1: advantage = the return (1, from every token on) minus the value.
    assert torch.allclose(adv, torch.tensor([[0.5, 0.5, 0.5, 0.0]]))
    assert torch.allclose(returns, torch.tensor([[1.0, 1.0, 1.0, 0.0]]))
    adv0, _ = gae(rewards, values, mask, gamma=1.0, lam=0.0)  # one-step TD errors
    assert torch.allclose(adv0, torch.tensor([[0.0, 0.0, 0.5, 0.0]]))
    white = whiten(torch.tensor([[1.0, 2.0, 3.0, 9.0]]), mask)
    assert white[0, 3] == 0 and abs(float(white[0, :3].mean())) < 1e-6


def test_ppo_accumulates_micro_batches_and_follows_the_schedule(data, tmp_path):
    """Two micro-batches make one optimizer step per pass: the linear schedule over 2 steps
    × 1 pass is at half the rate after the first step and at 0 after the second."""
    log = _ppo_run(data, tmp_path, steps=2, num_iterations=1, gradient_accumulation_steps=2,
                   lr_scheduler="linear").state.log_history  # fmt: skip
    assert [r["learning_rate"] for r in log] == pytest.approx([2.5e-3, 0.0])
    with pytest.raises(UserError, match="batch_size .4. must be at least .*accumulation_steps"):
        _ppo_run(data, tmp_path, batch_size=4, gradient_accumulation_steps=8)
