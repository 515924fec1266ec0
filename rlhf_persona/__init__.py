"""rlhf_persona: from users' thumbs, ratings and A/B choices to chatbots personalized per
segment."""

__version__ = "0.1.0"
