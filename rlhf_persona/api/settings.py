"""Service settings, from the environment (``RLHF_PERSONA_*``) or passed to ``create_app``."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Every field can be set as ``RLHF_PERSONA_<NAME>`` (e.g. ``RLHF_PERSONA_DATABASE_URL``)."""

    model_config = SettingsConfigDict(env_prefix="RLHF_PERSONA_", extra="ignore")

    database_url: str | None = Field(
        None, description="SQLAlchemy URL or SQLite path; None uses ./feedback.db."
    )
    hash_key: str | None = Field(
        None, description="Secret key of the keyed hashes of external ids (dev default if unset)."
    )
    max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Larger request bodies are refused with 413."
    )
    max_batch_events: int = Field(
        5000, ge=1, description="Most events one POST /v1/feedback/batch may carry."
    )
    writer_max_events: int = Field(
        2000, ge=1, description="Most events the writer commits in one transaction (group commit)."
    )
    api_key_cache_seconds: float = Field(
        30.0, ge=0, description="How long a valid API key is trusted before it is checked again."
    )
    max_page_size: int = Field(1000, ge=1, description="Largest `limit` of the list endpoints.")
    dev: bool = Field(
        False,
        description="Development mode (``serve --dev``): the public development hash key is "
        "accepted. Without it the service refuses to start without real secrets.",
    )
