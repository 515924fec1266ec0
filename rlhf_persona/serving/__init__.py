"""Chat generation for live feedback collection: replies from the policy serving each user,
per-user tokens for the chat page, a micro-batcher for generation and a simulated-traffic client.

- ``ChatSettings`` (``settings``): what the service's chat serves (``RLHF_PERSONA_CHAT_*``).
- ``mint_token`` / ``verify_token`` (``tokens``): short-lived, HMAC-signed per-user tokens.
- ``MicroBatcher`` (``batcher``): concurrent requests → one ``generate`` call per batch.
- ``ChatPolicy`` (``policy``): user → segment → route (adapter / persona) → replies; policy and
  best-of-n reward loading.
- ``ProcessPolicy`` (``worker``): the same, generating in a child process.
- ``ChatLimiter`` (``limits``): per-token and global admission limits of ``POST /v1/chat``.
- ``run_traffic`` (``traffic``): simulated users playing against a running service over HTTP.
- ``simulate-traffic`` and ``chat-link`` (``commands``).

The HTTP routes live in ``rlhf_persona.api.routes.chat`` (API) and ``.pages``
(the chat page, static files in ``rlhf_persona/serving/web/``).
"""
