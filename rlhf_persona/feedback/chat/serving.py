"""The policy behind the chat: a user's segment → a route (adapter / persona prompt) → replies.

``ChatPolicy`` wraps ``rlhf_persona.policy.PolicyGenerator``. With a registry folder (the
``AdapterRegistry`` a training round wrote), a user in segment ``s`` is served by
``registry.route(s)`` (their segment's adapter and/or persona system prompt; segments without a
policy fall back to ``global``, then ``base``), and users without a segment by ``global``.
Without a registry, everyone gets the base policy ``settings.policy``.

``generate`` is the micro-batcher's batch function: it runs in the batcher's worker thread, one
call per batch, and returns each reply with what produced it, ready to be stored with the reply.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf_persona.errors import UserError
from rlhf_persona.feedback.chat.settings import ChatSettings

log = logging.getLogger("rlhf_persona.chat")
GLOBAL = "global"  # the serving key of users without a segment (policy.registry.GLOBAL)

#: Reason tags the chat page offers: the simulated users' vocabulary
#: (``simulation.user.REASON_TAGS``), so real and simulated feedback speak the same language.
REASON_TAGS = [
    "too long", "too short", "too formal", "too casual", "too many emoji", "needs some emoji",
    "too enthusiastic", "too flat", "too listy", "wanted a list", "too much detail",
    "not detailed enough", "unwanted question", "no follow-up question", "off topic",
    "not my interests",
]  # fmt: skip


@dataclass(frozen=True)
class Request:
    """One reply to generate: the user's segment (None: none yet) and their message."""

    segment: int | None
    prompt: str


@dataclass
class Generated:
    """A reply and what produced it (stored with the reply)."""

    text: str
    policy: str
    adapter: str | None
    segment: int | None
    generation: dict[str, Any] = field(default_factory=dict)


def check_registry(path: Path | None) -> None:
    """A clear error for a registry folder that is not one (before loading any model)."""
    if path is not None and not (Path(path) / "manifest.json").is_file():
        raise UserError(f"--policy-registry {path}: no manifest.json; not a policy registry")


class ChatPolicy:
    """Loads the policy (lazily, on the batcher's worker thread) and generates replies."""

    def __init__(self, settings: ChatSettings, cache_dir: Path | None = None) -> None:
        check_registry(settings.policy_registry)
        self.settings = settings
        self.cache_dir = cache_dir
        self.generator: Any = None
        self.load_s: float | None = None
        self._calls = 0
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self.generator is not None

    def load(self) -> ChatPolicy:
        """Load the registry, the base model and every adapter; warm up with one token."""
        with self._lock:
            if self.generator is not None:
                return self
            start = time.perf_counter()
            import torch

            from rlhf_persona.policy import AdapterRegistry, PolicyGenerator

            if self.settings.torch_threads:
                torch.set_num_threads(self.settings.torch_threads)
            if self.settings.switch_interval_ms and not self.settings.separate_process:
                # Generation holds the GIL between torch ops; the API's threads wait for it
                # at most this long per hand-over (Python's default is 5 ms).
                sys.setswitchinterval(self.settings.switch_interval_ms / 1000)
            s = self.settings
            if s.policy_registry is not None:
                registry = AdapterRegistry.load(s.policy_registry)
            else:  # an in-memory registry with only the base route
                registry = AdapterRegistry(Path("."), s.policy)
            generator = PolicyGenerator(
                registry, device=s.device, cache_dir=self.cache_dir, batch_size=s.max_batch
            )
            generator.load_all()
            generator.generate([GLOBAL], ["hello"], max_new_tokens=1)  # first-call costs
            self.generator = generator
            self.load_s = time.perf_counter() - start
            log.info("chat policy loaded in %.1fs: %r", self.load_s, registry)
        return self

    def key(self, segment: int | None) -> int | str:
        return GLOBAL if segment is None else segment

    def generate(self, requests: list[Request]) -> list[Generated]:
        """One reply per request, in one ``PolicyGenerator.generate`` call (grouped by route).
        Batch ``n`` samples with seed ``settings.seed + n``, recorded with each reply."""
        self.load()
        s = self.settings
        seed = s.seed + self._calls
        self._calls += 1
        keys = [self.key(r.segment) for r in requests]
        texts = self.generator.generate(
            keys, [r.prompt for r in requests], max_new_tokens=s.max_new_tokens,
            temperature=s.temperature, top_p=s.top_p, seed=seed,
        )  # fmt: skip
        registry = self.generator.registry
        base = {"model": registry.base_model, "max_new_tokens": s.max_new_tokens,
                "temperature": s.temperature, "top_p": s.top_p, "seed": seed,
                "batch_size": len(requests)}  # fmt: skip
        if s.policy_registry is not None:
            base.update(registry=str(s.policy_registry), round=registry.round)
        out = []
        for request, key, text in zip(requests, keys, texts, strict=True):
            route = registry.route(key)
            out.append(
                Generated(
                    text=text,
                    policy=self.generator.label(key),
                    adapter=route.adapter,
                    segment=request.segment,
                    generation={
                        **base,
                        "key": str(key),
                        "model": registry.base_model_of(route),
                        "persona": bool(route.system_prompt),
                    },
                )
            )
        return out
