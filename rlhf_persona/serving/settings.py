"""Settings of the chat endpoint, from ``RLHF_PERSONA_CHAT_*`` variables (``rlhf-persona serve
--policy ... --policy-registry ... --ab-share ... --best-of-n ... --best-of-n-reward ...`` sets
them) or passed in as ``app.state.chat_settings`` before the app starts."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from rlhf_persona.serving.tokens import MAX_TTL_S

ENV_PREFIX = "RLHF_PERSONA_CHAT_"


class ChatSettings(BaseSettings):
    """Every field can be set as ``RLHF_PERSONA_CHAT_<NAME>`` (e.g. ``..._AB_SHARE=0.5``)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    policy: str = Field(
        "embedded:tiny",
        description="Base policy spec served when there is no registry (embedded:tiny, "
        "embedded:tiny-test, a hub id or a folder).",
    )
    policy_registry: Path | None = Field(
        None,
        description="An AdapterRegistry folder (manifest.json): each user is served by their "
        "segment's adapter / persona prompt; its base model replaces `policy`.",
    )
    best_of_n: int = Field(
        1,
        ge=1,
        description="Best-of-n serving: sample this many replies per request and send the one "
        "`best_of_n_reward` scores highest for the user (1 = off; cost ≈ n × one generation).",
    )
    best_of_n_reward: Path | None = Field(
        None,
        description="A saved reward model folder to rank best-of-n candidates with: a "
        "UserLevelReward (user_level.json, scores per user), a segment RewardModel "
        "(reward_model.json) or a FeatureReward (feature_reward.json). Required when "
        "best_of_n > 1.",
    )
    ab_share: float = Field(
        0.2, ge=0, le=1, description="Share of turns answered with two replies (an A/B choice)."
    )
    max_new_tokens: int = Field(64, ge=1, le=1024, description="Longest reply, in tokens.")
    temperature: float = Field(0.8, ge=0, le=5, description="Sampling temperature (0 = greedy).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    seed: int = Field(0, description="Seed of the first batch (batch n samples with seed + n).")
    device: str = Field("cpu", description="cpu, cuda or auto.")
    generation_backend: Literal["hf", "vllm", "auto"] = Field(
        "hf",
        description="hf (transformers), vllm (one vLLM engine serving every adapter; CUDA + "
        "the vllm package, else falls back to hf with a warning) or auto.",
    )
    separate_process: bool = Field(
        True,
        description="Generate in a child process, so generation never holds the service's "
        "GIL (feedback stays fast under chat load); False: in a thread of the service.",
    )
    torch_threads: int | None = Field(
        1,
        ge=1,
        description="torch intra-op threads of generation (None: torch's default, one per "
        "core). One keeps a core for the API and is several times faster for tiny models on a "
        "busy CPU (threads spin-wait on each other); raise it for larger models on idle cores.",
    )
    switch_interval_ms: float | None = Field(
        1.0,
        gt=0,
        le=100,
        description="With separate_process False: Python's thread switch interval once the "
        "policy is loaded (None: keep 5 ms); shorter lets the API take the GIL back sooner.",
    )
    max_batch: int = Field(32, ge=1, description="Most replies generated in one batch.")
    batch_window_ms: float = Field(
        5.0, ge=0, le=1000, description="How long a batch waits for more requests to join."
    )
    preload: bool = Field(
        False,
        description="Load the policy in the background when the service starts (else on the "
        "first chat request).",
    )
    max_message_chars: int = Field(2000, ge=1, le=20_000, description="Longest user message.")
    token_secret: str | None = Field(
        None,
        description="Key of the per-user chat tokens; default: derived from "
        "RLHF_PERSONA_HASH_KEY (set either in production).",
    )
    token_ttl_s: int = Field(
        3600, ge=10, le=MAX_TTL_S, description="Default lifetime of a chat token, seconds."
    )
    max_inflight: int = Field(
        64, ge=1, description="Most chat requests in progress at once (all callers); more: 429."
    )
    token_max_inflight: int = Field(
        2, ge=1, description="Most chat requests in progress at once per chat token; more: 429."
    )
    token_rate_per_min: float = Field(
        20, gt=0, description="Chat requests per minute per chat token (sustained); more: 429."
    )
    token_burst: int = Field(
        10, ge=1, description="Chat requests a chat token may send at once after a pause."
    )
    segment_cache_s: float = Field(
        30.0, ge=0, description="How long a user's segment is cached before it is read again."
    )

    def env(self) -> dict[str, str]:
        """The settings as environment variables (for a service started in a subprocess)."""
        out = {}
        for name, value in self.model_dump(exclude_unset=True).items():
            if value is not None:
                out[ENV_PREFIX + name.upper()] = str(value)
        return out
