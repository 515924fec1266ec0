"""Generation backends: transformers ``generate`` (everywhere) or one vLLM engine (CUDA).

``make_generator`` is what collection, evaluation and serving call. ``models.generation_backend``
chooses: ``hf`` (``PolicyGenerator``), ``vllm`` (``VLLMGenerator``: one engine per base model
serves every segment adapter of the registry through multi-LoRA, with the route's persona
prompt in the chat template, as the HF path renders it), or ``auto`` (vLLM where it can run).
vLLM needs a CUDA GPU and the ``vllm`` package (``pip install rlhf-persona[vllm]``); where either
is missing, ``vllm`` falls back to ``hf`` with a warning, so one config runs on a laptop and on a
GPU node. Log-probs and the KL from the base (evaluation diagnostics) stay on transformers.
"""

from __future__ import annotations

import importlib.util
import warnings

import torch

from rlhf_persona.policy.generate import PolicyGenerator, clean_reply
from rlhf_persona.policy.registry import AdapterRegistry
from rlhf_persona.policy.strategies import Route


def vllm_missing(device: str | None = None) -> str | None:
    """Why vLLM cannot run here (None when it can): it needs the package and a CUDA GPU."""
    if importlib.util.find_spec("vllm") is None:
        return "the vllm package is not installed (pip install 'rlhf-persona[vllm]')"
    if device == "cpu" or not torch.cuda.is_available():
        return "vLLM needs a CUDA GPU"
    return None


def select_backend(requested: str, device: str | None = None) -> str:
    """``hf`` or ``vllm`` for a requested ``hf`` / ``vllm`` / ``auto``; ``vllm`` falls back to
    ``hf`` with a warning naming why."""
    if requested not in ("hf", "vllm", "auto"):
        raise ValueError(f"generation backend must be hf, vllm or auto, not {requested!r}")
    if requested == "hf":
        return "hf"
    reason = vllm_missing(device)
    if reason is None:
        return "vllm"
    if requested == "vllm":
        warnings.warn(f"generation_backend=vllm: {reason}; generating with transformers",
                      RuntimeWarning, stacklevel=2)  # fmt: skip
    return "hf"


def make_generator(registry: AdapterRegistry, backend: str = "hf", **kwargs) -> PolicyGenerator:
    """A generator for ``registry`` on the selected backend (kwargs: ``PolicyGenerator``'s)."""
    chosen = select_backend(backend, kwargs.get("device"))
    cls = VLLMGenerator if chosen == "vllm" else PolicyGenerator
    return cls(registry, **kwargs)


class VLLMGenerator(PolicyGenerator):
    """``PolicyGenerator`` whose ``generate`` runs on vLLM: one engine per base model, every
    adapter of the registry a LoRA request on it. Same arguments and same reply cleaning; the
    samples differ from transformers' (another sampler), so seeds reproduce within a backend."""

    gpu_memory_utilization = 0.5  # leaves room for the transformers copy (log-probs, KL)

    def __init__(self, registry: AdapterRegistry, **kwargs):
        super().__init__(registry, **kwargs)
        self._engines: dict[str, object] = {}
        self._lora_ids: dict[str, int] = {}

    def generate(self, keys, prompts, max_new_tokens=64, temperature=0.7, top_p=1.0, seed=0):
        from vllm import SamplingParams

        replies = [""] * len(prompts)
        with self._lock:
            for route, idx in self._groups(keys):
                engine, tokenizer = self._engine(route)
                # Token ids, not text: vLLM would add a BOS the chat template already has.
                texts = [
                    {"prompt_token_ids": tokenizer(self._render(tokenizer, prompts[i], route),
                                                   add_special_tokens=False)["input_ids"]}
                    for i in idx
                ]  # fmt: skip
                params = SamplingParams(
                    n=1,
                    temperature=temperature,
                    top_p=top_p if temperature > 0 else 1.0,
                    max_tokens=max_new_tokens,
                    seed=seed,
                )
                outs = engine.generate(texts, params, lora_request=self._lora(route),
                                       use_tqdm=False)  # fmt: skip
                for i, out in zip(idx, outs, strict=True):
                    replies[i] = clean_reply(out.outputs[0].text)
        return replies

    # -- internals --------------------------------------------------------------------------
    @staticmethod
    def _render(tokenizer, prompt: str, route: Route) -> str:
        from rlhf_persona.policy.common import render_prompt

        return render_prompt(tokenizer, prompt, route.system_prompt)

    def _engine(self, route: Route):
        from vllm import LLM

        from rlhf_persona.models import resolve_model_path

        spec = self.registry.base_model_of(route)
        if spec not in self._engines:
            ranks = [_lora_rank(self.registry, n) for n in self.registry.adapters] or [8]
            llm = LLM(
                model=str(resolve_model_path(spec, self.cache_dir)),
                dtype="bfloat16" if self.bf16 else "auto",
                enable_lora=bool(self.registry.adapters),
                max_loras=max(1, len(self.registry.adapters)),
                max_lora_rank=max(ranks),
                gpu_memory_utilization=self.gpu_memory_utilization,
                seed=0,
            )
            self._engines[spec] = (llm, llm.get_tokenizer())
        return self._engines[spec]

    def _lora(self, route: Route):
        if not route.adapter:
            return None
        from vllm.lora.request import LoRARequest

        lora_id = self._lora_ids.setdefault(route.adapter, len(self._lora_ids) + 1)
        return LoRARequest(route.adapter, lora_id, str(self.registry.adapter_path(route.adapter)))


def _lora_rank(registry: AdapterRegistry, name: str) -> int:
    import json

    config = registry.adapter_path(name) / "adapter_config.json"
    return int(json.loads(config.read_text()).get("r", 8)) if config.is_file() else 8


def vllm_trainer_kwargs(use_vllm: bool, device: str) -> dict:
    """GRPO/RLOO config fields for ``policy.{grpo,rloo}.use_vllm``: TRL's colocated vLLM when it
    can run, else transformers generation with a warning."""
    if not use_vllm:
        return {}
    reason = vllm_missing(device)
    if reason is not None:
        warnings.warn(f"use_vllm: {reason}; sampling rollouts with transformers",
                      RuntimeWarning, stacklevel=2)  # fmt: skip
        return {}
    return {"use_vllm": True, "vllm_mode": "colocate"}
