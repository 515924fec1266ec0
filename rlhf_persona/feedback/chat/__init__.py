"""Live feedback collection: chat replies from the policy serving each user, per-user tokens
for the chat page, a micro-batcher for generation and a simulated-traffic client.

- ``ChatSettings`` (``settings``): what the service's chat serves (``RLHF_PERSONA_CHAT_*``).
- ``mint_token`` / ``verify_token`` (``tokens``): short-lived, HMAC-signed per-user tokens.
- ``MicroBatcher`` (``batcher``): concurrent requests → one ``generate`` call per batch.
- ``ChatPolicy`` (``serving``): user → segment → route (adapter / persona) → replies.
- ``run_traffic`` (``traffic``): simulated users playing against a running service over HTTP.

The HTTP routes live in ``rlhf_persona.feedback.service.routes.chat`` (API) and ``.pages``
(the chat page, static files in ``rlhf_persona/feedback/web/``).
"""
