"""Typed experiment configuration, loaded from YAML and validated by pydantic.

Every field has a default and a one-line description (``Field(description=...)``), so
``rlhf-persona config show`` can print the whole schema. Unknown keys are errors: a typo'd key
must never be silently ignored.

Each stage owns one section class here (``SegmentationConfig`` for ``segmentation:``…).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from rlhf_persona.errors import UserError
from rlhf_persona.registry import registered_name

# Names checked against the registries that look them up (imported when a value is validated).
AlgorithmName = registered_name("rlhf_persona.policy.algorithms:ALGORITHMS")
PolicyStrategyName = registered_name("rlhf_persona.policy.strategies:STRATEGIES")
RewardStrategyName = registered_name("rlhf_persona.reward:STRATEGIES")


class ConfigError(UserError):
    """A config file or override is unusable; the message names the file, the key and why."""


class Section(BaseModel):
    """Base for config sections: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunConfig(Section):
    name: str = Field("quickstart", description="Run name; the run folder is RUNS_DIR/NAME.")
    runs_dir: Path = Field(Path("runs"), description="Folder under which run folders are created.")
    seed: int = Field(0, description="Seed for every random number generator of the run.")


class TrackingConfig(Section):
    wandb_mode: Literal["offline", "online", "disabled"] = Field(
        "offline", description="W&B mode: offline writes a local run folder and needs no network."
    )
    project: str = Field("rlhf-persona", description="W&B project name.")
    entity: str | None = Field(None, description="W&B entity (team); None uses your default.")
    log_artifacts: bool = Field(
        True,
        description="Log each round's adapters, reward model, segmenter and training data as W&B "
        "artifacts (added in place, not copied: keep the run folder until it is synced).",
    )


class ModelsConfig(Section):
    policy: str = Field(
        "embedded:tiny",
        description="Policy model spec: embedded:tiny, embedded:tiny-test, a hub id or a path.",
    )
    encoder: str = Field(
        "embedded:minilm", description="Encoder for reward models and text embeddings."
    )
    cache_dir: Path | None = Field(
        None,
        description="Where embedded models are built; default $RLHF_PERSONA_CACHE or "
        "~/.cache/rlhf_persona.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto uses CUDA when available, else the CPU."
    )
    bf16: bool = Field(False, description="bf16 training/inference (GPU only; slow on CPU).")
    attn_implementation: str | None = Field(
        None,
        description="Attention kernel of the policy model (transformers' attn_implementation: "
        "eager, sdpa, flash_attention_2, ...); None lets transformers choose.",
    )
    generation_backend: Literal["hf", "vllm", "auto"] = Field(
        "hf",
        description="Reply generation in collection, evaluation and serving: hf (transformers "
        "generate), vllm (one vLLM engine serving every segment adapter; CUDA + the vllm "
        "package), auto (vllm where it can run, else hf). vllm falls back to hf with a warning.",
    )
    torch_threads: int | None = Field(
        1,
        ge=1,
        description="CPU threads torch may use (None: torch's default). Tiny models gain nothing "
        "from more, and extra threads spin when the machine is busy.",
    )


class PopulationConfig(Section):
    name: str = Field(
        "four_segments", description="Population: a shipped name (envs/NAME.yaml) or a YAML path."
    )
    users: int = Field(200, ge=1, description="Number of simulated users to sample.")


class StoreConfig(Section):
    url: str | None = Field(
        None,
        description="SQLAlchemy database URL; None uses $RLHF_PERSONA_DATABASE_URL or a SQLite "
        "file in the run folder.",
    )


class SegmentationConfig(Section):
    k: int | None = Field(None, ge=1, description="Number of segments; None picks k by silhouette.")
    k_range: tuple[int, int] = Field((2, 8), description="Range searched when k is None.")
    features: Literal["profile", "behaviour", "both"] = Field(
        "both", description="Which user features the clustering uses."
    )
    min_segment_size: int = Field(
        5, ge=1, description="Clusters smaller than this merge into their nearest neighbour."
    )
    behaviour: Literal["features", "items"] = Field(
        "features",
        description="Behaviour from feedback: features = preference direction over reply "
        "features; items = vote per item (Polis-style statements).",
    )
    profile_weight: float = Field(
        1.0, ge=0, description="Weight of the profile block (each block is scaled to variance 1)."
    )
    behaviour_weight: float = Field(
        1.0, ge=0, description="Weight of the behaviour block (each block is scaled to variance 1)."
    )
    behaviour_components: int | None = Field(
        None, ge=1, description="PCA components of the behaviour block; None keeps all columns."
    )
    ridge_alpha: float = Field(
        5.0, gt=0, description="Ridge prior of per-user preference fits (shrinks sparse users)."
    )
    embed_relevance: bool = Field(
        False, description="Measure the MiniLM relevance reply feature (slow) for behaviour."
    )
    min_feedback: int = Field(
        1,
        ge=1,
        description="Users with fewer feedback events do not shape the segments (they are still "
        "assigned; with no feedback at all, from their profile).",
    )


class RewardConfig(Section):
    strategy: RewardStrategyName = Field(
        "heads",
        description="How the reward model conditions on the segment: global, prefix, heads, "
        "lora or a registered strategy.",
    )
    pairs_across_prompts: bool = Field(
        True,
        description="Train on each user's liked vs disliked replies to different prompts too "
        "(thumbs and ratings rarely share a prompt; same user, so the same threshold).",
    )
    user_level: bool = Field(False, description="Add shrunk per-user residuals on top.")
    user_shrinkage: float = Field(
        5.0,
        gt=0,
        description="user level: L2 strength λ pulling each user's residual toward 0 (= their "
        "segment's score); larger keeps users with few labels closer to their segment.",
    )
    user_features: Literal["reply", "embedding", "item_embedding"] = Field(
        "reply",
        description="user level: residual features — observable reply features, or the MiniLM "
        "embedding of the reply projected to user_dims principal components.",
    )
    user_dims: int = Field(8, ge=1, description="user level: embedding dims of the residual.")
    best_of_n: int = Field(
        1,
        ge=1,
        description="serving: replies sampled from the segment policy per request, the one the "
        "user-level reward scores highest is returned (1 = off; cost ≈ n × generation).",
    )
    max_length: int = Field(
        128, ge=16, description="Max tokens of (persona +) prompt + reply; longer rows truncated."
    )
    epochs: float = Field(3.0, gt=0, description="Passes over the preference pairs.")
    max_steps: int | None = Field(
        None, ge=1, description="Cap on optimizer steps per training phase (None: epochs decide)."
    )
    batch_size: int = Field(32, ge=1, description="Preference pairs per optimizer step.")
    learning_rate: float = Field(
        3e-4, gt=0, description="AdamW learning rate of the trainable encoder layers."
    )
    head_learning_rate: float = Field(
        5e-3,
        gt=0,
        description="AdamW learning rate of the reward heads, the pooler and LoRA / low-rank "
        "adapter weights.",
    )
    freeze_layers: int = Field(
        5,
        ge=0,
        description="Bottom transformer layers (and the embeddings) kept frozen; a number ≥ the "
        "encoder's depth freezes all of them and trains only the pooler and heads.",
    )
    cache_frozen: bool = Field(
        True,
        description="Memoize the frozen bottom's output per distinct input (BERT-style encoders): "
        "each text goes through the frozen layers once per process, shared by all strategies.",
    )
    freeze_top_kv: bool = Field(
        True,
        description="With one trainable layer left (BERT-style, cached): freeze its keys/values "
        "too and cache them; steps get several times cheaper, the [CLS] query, attention "
        "output and feed-forward still train.",
    )
    top_kv_rank: int = Field(
        16,
        ge=0,
        description="With freeze_top_kv: rank of a trainable correction of the cached keys/values "
        "(0: none); a little of their trainability back at a fraction of the cost.",
    )
    margin_scale: float = Field(
        0.0,
        ge=0,
        description="Multiplier on the export's margin in the loss -logσ(r_c − r_r − s·margin); "
        "0 ignores margins (keeps σ(r_a − r_b) a calibrated probability).",
    )
    unseen_segment: Literal["global", "error"] = Field(
        "global",
        description="Segment id the model was not trained on: score it with the global "
        "(unconditioned) part and log a warning, or raise an error.",
    )
    export_plain: bool = Field(
        True,
        description="Also save a global (or uncached prefix) reward model as a plain transformers "
        "AutoModelForSequenceClassification in hf/, loadable without rlhf_persona (doubles the "
        "saved folder's size).",
    )
    prefix_dropout: float = Field(
        0.15,
        ge=0,
        lt=1,
        description="prefix: share of training rows shown without persona text, which trains "
        "the unconditioned fallback.",
    )
    lora_r: int = Field(8, ge=1, description="lora: rank of each segment's adapter.")
    lora_alpha: int = Field(16, ge=1, description="lora: scaling numerator (scale = alpha / r).")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="lora: dropout on the LoRA path.")
    lora_target_modules: list[str] = Field(
        ["query", "key", "value", "dense", "q_proj", "k_proj", "v_proj", "o_proj"],
        description="lora: names of linear layers to adapt (those inside trainable layers).",
    )
    lora_epochs: float | None = Field(
        None, gt=0, description="lora: passes over each segment's pairs (None: epochs)."
    )
    eval_users: float = Field(
        0.2, gt=0, lt=1, description="eval (simulator): share of users held out as unseen users."
    )
    eval_labels_per_user: int = Field(
        30, ge=1, description="eval (simulator): pairwise labels per training user."
    )
    eval_test_pairs_per_user: int = Field(
        20, ge=1, description="eval (simulator): held-out pairs per user, on unseen prompts."
    )
    eval_prompts: int = Field(
        120, ge=2, description="eval (simulator): prompts in the training pool (test pool: 1/3)."
    )
    eval_replies_per_prompt: int = Field(
        5, ge=2, description="eval (simulator): styled corpus replies written per prompt."
    )
    few_shot: list[int] = Field(
        [0, 5, 20, 50], description="eval: new users' own label counts for the few-shot curve."
    )


class PolicyConfig(Section):
    algorithm: AlgorithmName = Field(
        "dpo",
        description="Policy optimisation algorithm: dpo, kto, grpo, rloo, ppo or a registered "
        "one; its own keys are in the policy.<algorithm> section.",
    )
    strategy: PolicyStrategyName = Field(
        "adapter",
        description="adapter: one LoRA per segment; prompt: persona system prompt (or a "
        "registered strategy).",
    )
    train_global: bool = Field(
        True, description="Also train the global baseline: one adapter on the pooled data."
    )
    steps: int = Field(
        16,
        ge=1,
        description="Optimizer steps per trained adapter (embedded:tiny, DPO, clean style pairs: "
        "~10 shift the style clearly, ≥ 20 at lr 1e-3 degenerate; scripts/bench_policy.py).",
    )
    learning_rate: float = Field(5e-4, gt=0, description="AdamW learning rate of the LoRA weights.")
    adam_epsilon: float = Field(
        1e-8,
        gt=0,
        description="AdamW's epsilon. Larger values shrink the steps that tiny gradients (a "
        "saturated loss) would otherwise still get at full learning rate.",
    )
    batch_size: int = Field(
        8,
        ge=2,
        description="Rows per step and device (DPO/KTO: pairs or thumbs; GRPO/RLOO: completions, "
        "a multiple of num_generations; PPO: prompts, one reply each). KTO needs ≥ 2.",
    )
    beta: float = Field(
        0.1,
        ge=0,
        description="KL strength to the base policy (DPO/KTO β; GRPO/RLOO/PPO KL coef).",
    )
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA path.")
    max_length: int = Field(
        192, ge=16, description="Max tokens of prompt + reply in DPO/KTO training rows."
    )
    gradient_accumulation_steps: int = Field(
        1,
        ge=1,
        description="Micro-batches per optimizer step (effective batch = batch_size × this × "
        "devices); trades memory for time on a GPU.",
    )
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = Field(
        "constant",
        description="Learning-rate schedule (transformers' lr_scheduler_type); few steps: a "
        "decaying schedule wastes half of them.",
    )
    warmup_steps: float = Field(
        0,
        ge=0,
        description="Linear warm-up: optimizer steps (≥ 1) or a share of all steps (< 1).",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute activations in the backward pass: less GPU memory for large "
        "models; tiny models only get slower.",
    )
    warm_start_steps: int = Field(
        0,
        ge=0,
        description="SFT steps on liked replies (chosen / thumbs-up) before the algorithm, in the "
        "same adapter; 0 = none.",
    )
    min_rows: int = Field(
        4,
        ge=1,
        description="A segment with fewer training rows gets no adapter; it is routed to the "
        "global policy instead.",
    )
    segment_models: dict[int, str] = Field(
        default_factory=dict,
        description="Per-segment base model override {segment_id: model spec}; segments not "
        "listed share models.policy.",
    )

    _sections: dict[str, BaseModel] = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _algorithm_sections(cls, data: Any, handler):
        """``policy.<algorithm>`` sections, validated by each registered algorithm's model, and the
        flat keys of the older layout (``policy.kto_loss``) moved into them with a warning."""
        if not isinstance(data, dict):
            return handler(data)
        from rlhf_persona.policy.algorithms import ALGORITHMS

        algorithms = ALGORITHMS.items()
        data = dict(data)
        raw = {name: data.pop(name) for name in algorithms if name in data}
        raw = {name: {} if v is None else v for name, v in raw.items()}
        _move_flat_keys(data, raw, {name: a.config for name, a in algorithms.items()},
                        set(cls.model_fields))  # fmt: skip
        cfg = handler(data)
        for name, algo in algorithms.items():
            cfg._sections[name] = _section(name, algo.config, raw.get(name, {}))
        return cfg

    @model_serializer(mode="wrap")
    def _dump_sections(self, handler, info):
        out = handler(self)
        for name, section in self._sections.items():
            out[name] = section.model_dump(mode=info.mode)
        return out

    def section(self, name: str | None = None) -> BaseModel:
        """The ``policy.<name>`` section (default: the configured algorithm's)."""
        name = name or self.algorithm
        if name not in self._sections:  # an algorithm registered after this config was loaded
            from rlhf_persona.policy.algorithms import ALGORITHMS

            self._sections[name] = ALGORITHMS.get(name).config()
        return self._sections[name]


def _move_flat_keys(data: dict, raw: dict, sections: dict[str, type[BaseModel]],
                    common: set[str]) -> None:  # fmt: skip
    """Move each flat key that some algorithm section declares (under its own or a legacy name)
    into every such section, unless the section sets it itself; warn once per key."""
    for key in [k for k in data if k not in common]:
        targets = []
        for name, model in sections.items():
            field = getattr(model, "legacy_names", {}).get(key, key)
            if field in model.model_fields:
                targets.append((name, field))
        if not targets:
            continue  # an unknown key: pydantic reports it
        value = data.pop(key)
        for name, field in targets:
            section = raw.setdefault(name, {})
            if isinstance(section, dict):
                section.setdefault(field, value)
        where = ", ".join(f"policy.{name}.{field}" for name, field in targets)
        warnings.warn(f"policy.{key} is deprecated: set {where} instead", FutureWarning,
                      stacklevel=2)  # fmt: skip


def _section(name: str, model: type[BaseModel], value: Any) -> BaseModel:
    if isinstance(value, model):
        return value
    try:
        return model.model_validate(value)
    except ValidationError as err:  # one error naming each key: policy.NAME.KEY: why
        problems = "\n".join(f"{name}.{line.strip()}" for line in _error_lines(err))
        raise PydanticCustomError("section", "{problems}", {"problems": problems}) from None


class LoopConfig(Section):
    rounds: int = Field(2, ge=1, description="Rounds of collect → segment → reward → policy.")
    prompts_per_user: int = Field(
        6, ge=1, description="Prompts each simulated user asks per round (collection)."
    )
    ab_share: float = Field(
        0.5, ge=0, le=1, description="Share of collection turns answered with two replies (A/B)."
    )
    max_new_tokens: int = Field(64, ge=1, description="Reply length cap when generating.")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature of the policies.")
    generation_batch_size: int = Field(
        32,
        ge=1,
        description="Replies generated per forward pass in collection, ranking and evaluation. "
        "128 generates the quickstart's replies ~20% faster on CPU, but draws other samples.",
    )
    eval_generation_batch_size: int | None = Field(
        None,
        ge=1,
        description="Replies per forward pass in the evaluation only (None = "
        "generation_batch_size): a larger batch speeds the evaluation up without changing what "
        "the policies learn from.",
    )
    rm_pairs_per_segment: int = Field(
        64,
        ge=0,
        description="DPO/KTO: extra pairs per segment, best vs worst of rm_candidates sampled "
        "replies under the reward model (iterative DPO); 0 trains on user feedback only.",
    )
    rm_candidates: int = Field(4, ge=2, description="Replies sampled per prompt for ranking.")
    rm_kto_rows: Literal["both", "chosen"] = Field(
        "both",
        description="KTO: the ranked pair as a desirable and an undesirable row (both), or only "
        "the best reply as desirable (chosen: the reward model pushes none of the policy's own "
        "samples down; users' thumbs-down still do).",
    )
    online_reward: Literal["model", "simulator"] = Field(
        "model",
        description="GRPO/RLOO reward: the segment-conditioned reward model, or simulated "
        "users' thumbs.",
    )
    continue_adapters: bool = Field(
        True, description="Each round continues training the previous round's adapters."
    )
    kto_pairwise: bool = Field(
        False,
        description="KTO also learns from A/B choices: the chosen reply as desirable, the "
        "other as undesirable (relative labels; thumbs and ratings of the same reply win).",
    )
    feedback_window: int | None = Field(
        None,
        ge=1,
        description="Rounds of feedback the reward models and policies learn from: the latest N "
        "(None = all). A short window forgets old tastes sooner when they drift; a long one "
        "learns from more labels.",
    )
    eval_users_per_segment: int = Field(
        20, ge=1, description="Held-out users per true segment in the evaluation."
    )
    eval_prompts_per_user: int = Field(2, ge=1, description="Held-out prompts per evaluated user.")
    final_eval_prompts_per_user: int | None = Field(
        None,
        ge=1,
        description="Held-out prompts per evaluated user in the last round only (None = "
        "eval_prompts_per_user): the figures a run is judged by get more replies (a gain's 95% "
        "interval narrows with the square root of the rows) without slowing earlier rounds.",
    )
    eval_diagnostic_prompts: int | None = Field(
        None,
        ge=1,
        description="Of each evaluated user's held-out prompts, how many the diagnostics use "
        "(None = all): the personalization gap and the reward model's pairwise accuracy (four "
        "more replies per prompt; base / global / personalized cost one each) and the KL from "
        "base (two forward passes per reply).",
    )
    embed_features: bool = Field(
        True, description="Simulator measures topical relevance with MiniLM embeddings."
    )


class ExperimentConfig(Section):
    """The whole experiment: one YAML file under ``configs/``."""

    run: RunConfig = Field(default_factory=RunConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    population: PopulationConfig = Field(default_factory=PopulationConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    segmentation: SegmentationConfig = Field(default_factory=SegmentationConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    loop: LoopConfig = Field(default_factory=LoopConfig)

    @property
    def run_dir(self) -> Path:
        return self.run.runs_dir / self.run.name


def _format_errors(source: str, err: ValidationError) -> str:
    return "\n".join([f"{source}: invalid config", *_error_lines(err)])


def _error_lines(err: ValidationError) -> list[str]:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        elif e["type"] == "section":  # policy.<algorithm>: its lines already name their keys
            lines.extend(f"  {key}.{line}" for line in e["msg"].splitlines())
        else:
            got = e.get("input")
            got_txt = "" if isinstance(got, dict) else f" (got {got!r})"
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"  {key}: {msg}{got_txt}")
    return lines


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"policy.algorithm=kto"`` → (["policy", "algorithm"], "kto"); values parse as YAML."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected KEY.SUB=VALUE")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: value is not valid YAML ({exc})") from None
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None):
    """Load and validate an experiment config; raises ConfigError naming file and key."""
    source = str(path) if path else "(defaults)"
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping of sections")
        # A section whose keys are all commented out loads as None: treat it as empty.
        data = {k: ({} if v is None else v) for k, v in (loaded or {}).items()}
    data = apply_overrides(data, list(overrides or []))
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        if overrides:
            source += " with --set " + " ".join(overrides)
        raise ConfigError(_format_errors(source, err)) from None


def dump_config(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def describe_fields(model: type[BaseModel] = ExperimentConfig, prefix: str = "") -> list[tuple]:
    """(key, type, default, description) for every leaf field: the documented schema."""
    rows = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.extend(describe_fields(ann, f"{prefix}{name}."))
            continue
        default = field.get_default(call_default_factory=True)
        type_name = getattr(ann, "__name__", None) or str(ann).replace("typing.", "")
        rows.append((f"{prefix}{name}", type_name, default, field.description or ""))
    if model is PolicyConfig:  # the registered algorithms' own sections
        from rlhf_persona.policy.algorithms import ALGORITHMS

        for name, algo in ALGORITHMS.items().items():
            rows.extend(describe_fields(algo.config, f"{prefix}{name}."))
    return rows
