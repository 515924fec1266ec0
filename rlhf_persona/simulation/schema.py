"""Population files (``envs/*.yaml``): schema, validation and loading.

A population is data: its segments (share of users, profile distributions, topics they ask
about, a preference vector over ``FEATURE_NAMES`` and the size of individual variation), the
feedback channels users choose between and how noisy each is, and optional drift. Unknown keys
are errors and every error names the file and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rlhf_persona import styles
from rlhf_persona.errors import UserError
from rlhf_persona.simulation.features import FEATURE_NAMES

NonNeg = Annotated[float, Field(ge=0)]
SHARE_TOLERANCE = 1e-6
CHANNELS: tuple[str, ...] = ("thumbs", "rating", "pairwise", "abstain")


class PopulationError(UserError):
    """A population file is unusable; the message names the file, the field and why."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_features(values: dict[str, float]) -> dict[str, float]:
    unknown = sorted(set(values) - set(FEATURE_NAMES))
    if unknown:
        raise ValueError(f"unknown feature {unknown[0]!r} (known: {', '.join(FEATURE_NAMES)})")
    return values


def _check_topics(values: dict[str, float]) -> dict[str, float]:
    unknown = sorted(set(values) - set(styles.TOPICS))
    if unknown:
        raise ValueError(f"unknown topic {unknown[0]!r} (known: {', '.join(styles.TOPICS)})")
    if not values or sum(values.values()) <= 0:
        raise ValueError("needs at least one topic with a positive weight")
    return values


def _positive_total(values: dict[str, float]) -> dict[str, float]:
    if not values or sum(values.values()) <= 0:
        raise ValueError("needs at least one value with a positive probability")
    return values


class Channels(Strict):
    """How a user answers a shown reply: probabilities of each channel (they must sum to 1)."""

    thumbs: NonNeg = Field(0.5, description="Thumbs up/down.")
    rating: NonNeg = Field(0.2, description="A 1-5 rating.")
    pairwise: NonNeg = Field(0.2, description="A choice between two replies (A/B).")
    abstain: NonNeg = Field(0.1, description="No feedback at all.")

    @model_validator(mode="after")
    def _sums_to_one(self) -> Channels:
        total = sum(self.probs())
        if abs(total - 1.0) > SHARE_TOLERANCE:
            raise ValueError(f"channel rates must sum to 1 (got {total:g})")
        return self

    def probs(self) -> list[float]:
        return [getattr(self, c) for c in CHANNELS]


class Rationality(Strict):
    """Inverse temperature of each channel's noise model: higher = closer to the utility."""

    thumbs: float = Field(3.0, gt=0, description="Logistic link: P(up) = σ(β (u − threshold)).")
    rating: float = Field(3.0, gt=0, description="Ordered logit over the rating cutpoints.")
    pairwise: float = Field(3.0, gt=0, description="Bradley–Terry: P(a ≻ b) = σ(β (u_a − u_b)).")


class Threshold(Strict):
    """Per-user thumbs threshold (utility units): normal(mean, sd)."""

    mean: float = 0.0
    sd: NonNeg = 0.3


class Numeric(Strict):
    """A numeric profile field: normal(mean, sd), clipped to [min, max]."""

    mean: float
    sd: NonNeg = 0.0
    min: float | None = None
    max: float | None = None


class Interests(Strict):
    """The multi-valued ``interests`` field: ``count`` distinct topics drawn by weight."""

    topics: dict[str, NonNeg]
    count: tuple[int, int] = Field((1, 3), description="Inclusive range of interests per user.")

    _topics = field_validator("topics")(_check_topics)

    @model_validator(mode="after")
    def _count_range(self) -> Interests:
        lo, hi = self.count
        n_pos = sum(w > 0 for w in self.topics.values())
        if not 1 <= lo <= hi:
            raise ValueError(f"count must satisfy 1 <= min <= max (got {list(self.count)})")
        if hi > n_pos:
            raise ValueError(f"count max {hi} exceeds the {n_pos} topics with positive weight")
        return self


class Profile(Strict):
    """Profile distributions of one segment; they overlap between segments on purpose."""

    categorical: dict[str, dict[str, NonNeg]] = Field(
        default_factory=dict, description="field → {value: probability} (normalised)."
    )
    numeric: dict[str, Numeric] = Field(default_factory=dict)
    interests: Interests

    @field_validator("categorical")
    @classmethod
    def _nonempty(cls, value: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for field, dist in value.items():
            try:
                _positive_total(dist)
            except ValueError as exc:
                raise ValueError(f"{field}: {exc}") from None
        return value

    def fields(self) -> tuple[set[str], set[str]]:
        return set(self.categorical), set(self.numeric)


class Segment(Strict):
    """One kind of user: share, profile, topics and hidden taste."""

    name: str = Field(min_length=1)
    share: float = Field(ge=0, le=1, description="Fraction of users in this segment.")
    description: str = ""
    preference: dict[str, float] = Field(
        description="Mean preference weight per feature (missing features weigh 0)."
    )
    individual_sd: NonNeg | dict[str, NonNeg] = Field(
        0.5, description="SD of each user's deviation from the mean (one number or per feature)."
    )
    threshold: Threshold = Field(default_factory=Threshold)
    topics: dict[str, NonNeg] = Field(description="Topics this segment asks about, by weight.")
    profile: Profile
    channels: Channels | None = Field(None, description="Overrides the population's channels.")

    _preference = field_validator("preference")(_check_features)
    _topics = field_validator("topics")(_check_topics)

    @field_validator("individual_sd")
    @classmethod
    def _sd_features(cls, value):
        return _check_features(value) if isinstance(value, dict) else value


class Drift(Strict):
    """After round ``after_round``, every user of ``segment`` shifts preferences by ``shift``."""

    segment: str
    after_round: int = Field(ge=0)
    shift: dict[str, float]

    _shift = field_validator("shift")(_check_features)


class Population(Strict):
    """A simulated user population (one ``envs/*.yaml`` file)."""

    name: str
    description: str = ""
    default_users: int = Field(400, ge=1, description="Users sampled when no count is given.")
    channels: Channels = Field(default_factory=Channels)
    rationality: Rationality = Field(default_factory=Rationality)
    rating_cutpoints: tuple[float, float, float, float] = Field(
        (-1.2, -0.4, 0.4, 1.2),
        description="Utility (relative to the user's threshold) separating ratings 1|2|3|4|5.",
    )
    reason_tag_rate: float = Field(
        0.5, ge=0, le=1, description="Probability a thumbs-down / rating ≤ 2 carries reason tags."
    )
    segments: list[Segment] = Field(min_length=1)
    drift: list[Drift] = Field(default_factory=list)

    @field_validator("rating_cutpoints")
    @classmethod
    def _increasing(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(b <= a for a, b in zip(value, value[1:], strict=False)):
            raise ValueError(f"must be strictly increasing (got {list(value)})")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Population:
        names = [s.name for s in self.segments]
        if len(set(names)) != len(names):
            raise ValueError(f"segments.name: duplicate segment names in {names}")
        total = sum(s.share for s in self.segments)
        if abs(total - 1.0) > SHARE_TOLERANCE:
            shares = ", ".join(f"{s.name}={s.share:g}" for s in self.segments)
            raise ValueError(f"segments.share: shares must sum to 1 (got {total:g}: {shares})")
        first = self.segments[0].profile.fields()
        for i, seg in enumerate(self.segments[1:], start=1):
            if seg.profile.fields() != first:
                raise ValueError(
                    f"segments.{i}.profile: must define the same fields as segments.0.profile"
                )
        for i, d in enumerate(self.drift):
            if d.segment not in names:
                raise ValueError(f"drift.{i}.segment: unknown segment {d.segment!r} ({names})")
        return self

    # ------------------------------------------------------------------ convenience
    @property
    def segment_names(self) -> list[str]:
        return [s.name for s in self.segments]

    @property
    def shares(self) -> list[float]:
        return [s.share for s in self.segments]

    def sample_users(self, n: int | None = None, seed: int = 0):
        """Sample ``n`` users (default ``default_users``); see ``population.sample_users``."""
        from rlhf_persona.simulation.population import sample_users

        return sample_users(self, n, seed)


def _format_errors(source: str, err: ValidationError) -> str:
    lines = [f"{source}: invalid population"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] != "value_error" and not isinstance(e.get("input"), dict | list):
            msg += f" (got {e.get('input')!r})"
        lines.append(f"  {key}: {msg}" if key else f"  {msg}")
    return "\n".join(lines)


def envs_dirs() -> list[Path]:
    """Where shipped populations live: inside the installed package, then the checkout."""
    import rlhf_persona

    pkg = Path(rlhf_persona.__file__).resolve().parent
    return [pkg / "envs", pkg.parent / "envs"]


def shipped_populations() -> list[str]:
    """Names of the populations shipped with the package (``envs/*.yaml``)."""
    return sorted({p.stem for d in envs_dirs() if d.is_dir() for p in d.glob("*.yaml")})


def resolve_population_path(name_or_path: str | Path) -> Path:
    """A YAML path as given, else a shipped population's file by name."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.suffix in {".yaml", ".yml"} or len(path.parts) > 1:
        raise PopulationError(f"{path}: population file not found")
    for d in envs_dirs():
        candidate = d / f"{path.name}.yaml"
        if candidate.is_file():
            return candidate
    known = ", ".join(shipped_populations()) or "none found"
    raise PopulationError(f"{name_or_path!r}: no such population (shipped: {known})")


def load_population(name_or_path: str | Path | Population = "four_segments") -> Population:
    """Load and validate a population by shipped name (``four_segments``) or YAML path."""
    if isinstance(name_or_path, Population):
        return name_or_path
    path = resolve_population_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise PopulationError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise PopulationError(f"{path}: top level must be a mapping")
    return parse_population(data, source=str(path))


def parse_population(data: dict, source: str = "(population)") -> Population:
    """Validate a population given as a dict; errors name ``source`` and the field."""
    try:
        return Population.model_validate(data)
    except ValidationError as err:
        raise PopulationError(_format_errors(source, err)) from None
