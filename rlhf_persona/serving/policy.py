"""The policy behind the chat: a user's segment → a route (adapter / persona prompt) → replies.

``ChatPolicy`` wraps ``rlhf_persona.policy.PolicyGenerator``. With a registry folder (the
``AdapterRegistry`` a training round wrote), a user in segment ``s`` is served by
``registry.route(s)`` (their segment's adapter and/or persona system prompt; segments without a
policy fall back to ``global``, then ``base``), and users without a segment by ``global``.
Without a registry, everyone gets the base policy ``settings.policy``.

With ``settings.best_of_n`` n > 1, each request's reply is the best of n samples from that
policy as ranked by the saved reward ``settings.best_of_n_reward`` (``policy.best_of_n``; a
``UserLevelReward`` scores with the requesting user's residual); the reply's policy label gets
``+best-of-N`` and its generation settings a ``best_of_n`` entry (n, reward folder, score).

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
from rlhf_persona.reward.saved import REWARD_FILES, reward_kind
from rlhf_persona.reward.saved import load as load_reward
from rlhf_persona.serving.settings import ChatSettings

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
    """One reply to generate: the user's segment (None: none yet), their message and their id
    (for a user-level best-of-n reward)."""

    segment: int | None
    prompt: str
    user_id: str | None = None


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


def check_best_of_n(n: int, reward: Path | None) -> None:
    """Clear errors for bad best-of-n settings, naming the ``serve`` option (before loading
    any model)."""
    if n < 1:
        raise UserError(f"--best-of-n {n}: must be ≥ 1 (1 = plain generation)")
    if reward is not None:
        path = Path(reward)
        if not path.is_dir():
            raise UserError(f"--best-of-n-reward {path}: no such folder")
        if reward_kind(path) is None:
            files = ", ".join(REWARD_FILES.values())
            message = f"not a saved reward model (none of {files})"
            raise UserError(f"--best-of-n-reward {path}: {message}")
    elif n > 1:
        raise UserError(f"--best-of-n {n}: needs --best-of-n-reward PATH (a saved reward model)")


def check_settings(settings: ChatSettings) -> None:
    """The checks of ``check_registry`` and ``check_best_of_n``."""
    check_registry(settings.policy_registry)
    check_best_of_n(settings.best_of_n, settings.best_of_n_reward)


class ChatPolicy:
    """Loads the policy (lazily, on the batcher's worker thread) and generates replies."""

    def __init__(self, settings: ChatSettings, cache_dir: Path | None = None) -> None:
        check_settings(settings)
        self.settings = settings
        self.cache_dir = cache_dir
        self.generator: Any = None
        self.reward: Any = None
        self.load_s: float | None = None
        self._calls = 0
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self.generator is not None

    def load(self) -> ChatPolicy:
        """Load the registry, the base model, every adapter and the best-of-n reward; warm up
        with one token."""
        with self._lock:
            if self.generator is not None:
                return self
            start = time.perf_counter()
            import torch

            from rlhf_persona.policy import AdapterRegistry
            from rlhf_persona.policy.backends import make_generator

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
            generator = make_generator(
                registry,
                s.generation_backend,
                device=s.device,
                cache_dir=self.cache_dir,
                batch_size=s.max_batch,
            )
            generator.load_all()
            if s.best_of_n > 1:
                assert s.best_of_n_reward is not None  # check_settings
                from rlhf_persona.policy.best_of_n import best_of_n

                self.reward = load_reward(s.best_of_n_reward, self.cache_dir)
                best_of_n(generator, self.reward, [GLOBAL], ["hello"], user_ids=[""], n=2,
                          max_new_tokens=1)  # fmt: skip
            else:
                generator.generate([GLOBAL], ["hello"], max_new_tokens=1)  # first-call costs
            self.generator = generator
            self.load_s = time.perf_counter() - start
            log.info("chat policy loaded in %.1fs: %r", self.load_s, registry)
        return self

    def key(self, segment: int | None) -> int | str:
        return GLOBAL if segment is None else segment

    def generate(self, requests: list[Request]) -> list[Generated]:
        """One reply per request, in one ``PolicyGenerator.generate`` call (grouped by route),
        or with best-of-n in one ``best_of_n`` call (n samples per request, then one scoring
        pass). Batch ``k`` samples with seed ``settings.seed + k``, recorded with each reply."""
        self.load()
        s = self.settings
        seed = s.seed + self._calls
        self._calls += 1
        keys = [self.key(r.segment) for r in requests]
        prompts = [r.prompt for r in requests]
        sampling = dict(max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                        top_p=s.top_p, seed=seed)  # fmt: skip
        scores = None
        if s.best_of_n > 1:
            from rlhf_persona.policy.best_of_n import best_of_n

            users = [r.user_id for r in requests]
            res = best_of_n(self.generator, self.reward, keys, prompts, user_ids=users,
                            n=s.best_of_n, **sampling)  # fmt: skip
            texts, scores = res.replies, res.scores
        else:
            texts = self.generator.generate(keys, prompts, **sampling)
        registry = self.generator.registry
        base = {"model": registry.base_model, "max_new_tokens": s.max_new_tokens,
                "temperature": s.temperature, "top_p": s.top_p, "seed": seed,
                "batch_size": len(requests)}  # fmt: skip
        if s.policy_registry is not None:
            base.update(registry=str(s.policy_registry), round=registry.round)
        out = []
        for i, (request, key, text) in enumerate(zip(requests, keys, texts, strict=True)):
            route = registry.route(key)
            generation = {**base, "key": str(key), "model": registry.base_model_of(route),
                          "persona": bool(route.system_prompt)}  # fmt: skip
            policy = self.generator.label(key)
            if scores is not None:
                policy = f"{policy}+best-of-{s.best_of_n}"
                generation["best_of_n"] = {"n": s.best_of_n, "reward": str(s.best_of_n_reward),
                                           "score": float(scores[i])}  # fmt: skip
            out.append(Generated(text=text, policy=policy, adapter=route.adapter,
                                 segment=request.segment, generation=generation))  # fmt: skip
        return out
