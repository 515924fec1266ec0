"""Serve many segment policies from one base model: grouped, batched, left-padded generation.

``PolicyGenerator`` loads each base model once and every adapter of a registry onto it (PEFT
``load_adapter`` by name). A call groups its requests by route (adapter + system prompt), switches
the adapter once per group (``set_adapter``; ``disable_adapter`` for ``base``) and generates the
group in left-padded batches (on CPU with ``decode.sample_shrinking``, whose batches shed finished
replies; elsewhere with ``generate``). A lock around switch + generate makes one generator safe to
share between the threads of a web service.

Keys name who a request is for: a segment id, ``"global"`` (pooled-data baseline) or ``"base"``
(adapters off). Segments without a policy of their own fall back to ``global`` (see
``AdapterRegistry.route``).
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from rlhf_persona.policy.common import (
    load_adapter,
    load_base,
    pad_left,
    render_prompt,
    resolve_device,
    stop_token_ids,
)
from rlhf_persona.policy.decode import sample_shrinking, shrinking_applies
from rlhf_persona.policy.registry import BASE, GLOBAL, AdapterRegistry
from rlhf_persona.policy.strategies import Route

_PROGRESS: contextvars.ContextVar = contextvars.ContextVar("generation_progress", default=None)


@contextlib.contextmanager
def generation_progress(total: int, desc: str):
    """A tqdm bar (count, rate, ETA) that every ``PolicyGenerator.generate`` call inside the
    block advances by its replies, batch by batch."""
    from tqdm.auto import tqdm

    with tqdm(total=total, desc=desc, unit="reply", dynamic_ncols=True) as bar:
        token = _PROGRESS.set(bar)
        try:
            yield bar
        finally:
            _PROGRESS.reset(token)


@dataclass
class _Backend:
    """One base model (possibly wrapped as a PeftModel) and the adapters loaded on it."""

    model: torch.nn.Module
    tokenizer: object
    adapters: set[str] = field(default_factory=set)


class PolicyGenerator:
    """Generate replies (and score log-probs / KL) with the policies of an ``AdapterRegistry``.

    Args:
        registry: the adapters and routes to serve.
        device: ``auto``/None (CUDA if available), ``cpu`` or ``cuda``.
        bf16: bf16 weights (CUDA only).
        cache_dir: embedded model cache (``models.cache_dir``).
        batch_size: max requests per forward pass.
        attn_implementation: the base models' attention kernel (None: transformers' choice).
    """

    def __init__(
        self,
        registry: AdapterRegistry,
        device: str | None = None,
        bf16: bool = False,
        cache_dir=None,
        batch_size: int = 32,
        attn_implementation: str | None = None,
    ):
        self.registry = registry
        self.attn_implementation = attn_implementation
        self.device = resolve_device(device)
        self.bf16 = bf16
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self._backends: dict[str, _Backend] = {}
        self._lock = threading.RLock()

    # -- public API -----------------------------------------------------------------------
    def generate(
        self,
        keys: Sequence[int | str],
        prompts: Sequence[str],
        max_new_tokens: int = 64,
        temperature: float = 0.7,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> list[str]:
        """One reply per (key, prompt); ``temperature`` 0 = greedy. Same inputs + seed → same
        replies: each route's group is sampled from a generator seeded with ``seed``."""
        _check_lengths(keys, prompts=prompts)
        replies: list[str] = [""] * len(prompts)
        with self._lock:
            for route, idx in self._groups(keys):
                backend = self._backend(route)
                texts = [
                    render_prompt(backend.tokenizer, prompts[i], route.system_prompt) for i in idx
                ]
                torch.manual_seed(seed)
                outs = []
                with self._activate(backend, route):
                    for s in range(0, len(texts), self.batch_size):
                        batch = texts[s : s + self.batch_size]
                        outs.append(
                            self._generate_batch(backend, batch, max_new_tokens, temperature, top_p)
                        )
                        if (bar := _PROGRESS.get()) is not None:
                            bar.update(len(batch))
                for i, reply in zip(idx, (r for batch in outs for r in batch), strict=True):
                    replies[i] = reply
        return replies

    def generate_for_users(
        self,
        user_ids: Sequence[str],
        prompts: Sequence[str],
        assignments: Mapping[str, int],
        **kwargs,
    ) -> list[str]:
        """Like ``generate`` with users routed through ``assignments`` (user id → segment, e.g.
        ``store.current_segments()``); users without a segment get the global policy."""
        return self.generate([assignments.get(u, GLOBAL) for u in user_ids], prompts, **kwargs)

    def label(self, key: int | str) -> str:
        """A short name of the policy serving ``key`` (for recording replies in the store)."""
        route = self.registry.route(key)
        name = route.adapter or BASE
        return f"{name}+persona" if route.system_prompt else name

    def logprobs(
        self, keys: Sequence[int | str], prompts: Sequence[str], replies: Sequence[str]
    ) -> list[np.ndarray]:
        """Per-token log-probabilities of each reply under the policy serving its key."""
        _check_lengths(keys, prompts=prompts, replies=replies)
        out: list[np.ndarray] = [np.zeros(0)] * len(prompts)
        with self._lock:
            for route, idx in self._groups(keys):
                logits = self._reply_logits(
                    route, [prompts[i] for i in idx], [replies[i] for i in idx]
                )
                for i, (lg, ids) in zip(idx, logits, strict=True):
                    lp = torch.log_softmax(lg, -1).gather(-1, ids[:, None])[:, 0]
                    out[i] = lp.numpy()
        return out

    def kl_from_base(
        self, keys: Sequence[int | str], prompts: Sequence[str], replies: Sequence[str]
    ) -> np.ndarray:
        """Per reply: Σ over its tokens of KL(policy ‖ base) between next-token distributions.

        The reference is the base model as ``base`` serves it (adapters off, no system prompt),
        so a persona prompt counts as divergence too. With replies sampled from the policy, the
        mean is an estimate of the sequence-level KL(π ‖ π_base) (exact per position, so ≥ 0 and
        low-variance). A segment on its own base model is compared with that base model.
        """
        _check_lengths(keys, prompts=prompts, replies=replies)
        kl = np.zeros(len(prompts))
        with self._lock:
            for route, idx in self._groups(keys):
                ps, rs = [prompts[i] for i in idx], [replies[i] for i in idx]
                pol = self._reply_logits(route, ps, rs)
                ref = self._reply_logits(
                    Route(None), ps, rs, base=self.registry.base_model_of(route)
                )
                for i, (lp, _), (lq, _) in zip(idx, pol, ref, strict=True):
                    p_log, q_log = torch.log_softmax(lp, -1), torch.log_softmax(lq, -1)
                    kl[i] = float((p_log.exp() * (p_log - q_log)).sum())
        return kl

    def load_all(self) -> PolicyGenerator:
        """Load every adapter of the registry now instead of on first use."""
        with self._lock:
            for name in self.registry.adapters:
                self._backend(Route(name))
        return self

    # -- internals --------------------------------------------------------------------------
    def _groups(self, keys: Sequence[int | str]) -> list[tuple[Route, list[int]]]:
        """Request indices grouped by route, in a fixed order (determinism across calls)."""
        groups: dict[tuple, tuple[Route, list[int]]] = {}
        for i, key in enumerate(keys):
            route = self.registry.route(key)
            groups.setdefault((route.adapter or "", route.system_prompt or ""), (route, []))[
                1
            ].append(i)
        return [groups[k] for k in sorted(groups)]

    def _backend(self, route: Route, base: str | None = None) -> _Backend:
        spec = base or self.registry.base_model_of(route)
        if spec not in self._backends:
            model, tokenizer = load_base(
                spec, self.device, self.bf16, self.cache_dir, self.attn_implementation
            )
            model.eval()
            self._backends[spec] = _Backend(model, tokenizer)
        backend = self._backends[spec]
        if route.adapter and route.adapter not in backend.adapters:
            self._load_adapter(backend, route.adapter)
        return backend

    def _load_adapter(self, backend: _Backend, name: str) -> None:
        path = self.registry.adapter_path(name)
        spec = self.registry.adapters[name].base_model
        backend.model = load_adapter(backend.model, path, name, spec=spec)
        backend.model.eval()
        backend.adapters.add(name)

    @contextlib.contextmanager
    def _activate(self, backend: _Backend, route: Route):
        """The route's adapter on (or every adapter off for the base model) inside the block."""
        if route.adapter:
            backend.model.set_adapter(route.adapter)
            yield
        elif backend.adapters:  # a PeftModel: switch every adapter off
            with backend.model.disable_adapter():
                yield
        else:
            yield

    @torch.inference_mode()
    def _generate_batch(self, backend, texts, max_new_tokens, temperature, top_p) -> list[str]:
        tok = backend.tokenizer
        enc = _encode_left_padded(tok, texts, self.device)
        stops = _stop_ids(backend)
        if self.device == "cpu" and shrinking_applies(backend.model.generation_config):
            new = sample_shrinking(backend.model, enc["input_ids"], enc["attention_mask"],
                                   max_new_tokens, temperature, top_p, stops)  # fmt: skip
        else:
            sample = temperature > 0
            out = backend.model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=sample,
                temperature=temperature if sample else None,
                top_p=top_p if sample else None,
                top_k=None,
                pad_token_id=tok.pad_token_id,
                eos_token_id=stops,
            )
            new = out[:, enc["input_ids"].shape[1] :]
        return [clean_reply(t) for t in tok.batch_decode(new, skip_special_tokens=True)]

    @torch.inference_mode()
    def _reply_logits(
        self, route: Route, prompts: Sequence[str], replies: Sequence[str], base: str | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(logits [T, V] predicting each reply token, reply token ids [T]) per reply."""
        backend = self._backend(route, base)
        tok = backend.tokenizer
        results = []
        with self._activate(backend, route):
            for s in range(0, len(prompts), self.batch_size):
                ps, rs = prompts[s : s + self.batch_size], replies[s : s + self.batch_size]
                prompt_ids = [
                    tok(render_prompt(tok, p, route.system_prompt), add_special_tokens=False)[
                        "input_ids"
                    ]
                    for p in ps
                ]
                reply_ids = [tok(r, add_special_tokens=False)["input_ids"] for r in rs]
                seqs = [p + r for p, r in zip(prompt_ids, reply_ids, strict=True)]
                enc = pad_left(seqs, tok.pad_token_id, self.device)
                positions = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
                logits = backend.model(**enc, position_ids=positions).logits.float().cpu()
                length = enc["input_ids"].shape[1]
                for row, ids in enumerate(reply_ids):
                    t = len(ids)
                    # Left padding aligns ends: position L-t-1+j predicts reply token j.
                    results.append((logits[row, length - t - 1 : length - 1], torch.tensor(ids)))
        return results


def clean_reply(text: str) -> str:
    """Decoded text as a reply: stripped, without NUL characters (a byte-level model can emit
    one; text columns — PostgreSQL's among them — cannot hold it, so the store rejects it)."""
    return text.replace("\x00", "").strip()


def _check_lengths(keys, **columns) -> None:
    for name, values in columns.items():
        if len(values) != len(keys):
            raise ValueError(f"{len(keys)} keys but {len(values)} {name}")


def _stop_ids(backend: _Backend) -> list[int]:
    return stop_token_ids(backend.model, backend.tokenizer)


def _encode_left_padded(tokenizer, texts: Sequence[str], device: str) -> dict:
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    return pad_left(ids, tokenizer.pad_token_id, device)
