"""HTTP API of the feedback store (FastAPI). ``create_app(settings)`` builds the app."""

from rlhf_persona.api.app import create_app
from rlhf_persona.api.settings import ServiceSettings

__all__ = ["ServiceSettings", "create_app"]
