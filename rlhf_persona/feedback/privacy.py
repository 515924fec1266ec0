"""Privacy helpers: keyed hashing of identifiers and masking of contact details in free text.

External user ids (an e-mail, a CRM id, a Polis participant number) are never stored: only their
keyed hash (HMAC-SHA256 with ``RLHF_PERSONA_HASH_KEY``). The same key turns them into stable
pseudonymous user ids and into tombstones, so a deleted user stays out after a re-import without
the store keeping anything that names them.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import warnings

#: Used when ``RLHF_PERSONA_HASH_KEY`` is unset. Fine for development and tests; a deployment
#: must set its own secret, otherwise anyone can recompute the hashes of guessed ids.
DEV_HASH_KEY = "rlhf-persona-dev-key"
HASH_KEY_ENV = "RLHF_PERSONA_HASH_KEY"

_warned_dev_key = False


def resolve_hash_key(key: str | None = None, warn: bool = True) -> bytes:
    """The key to use: the argument, else ``$RLHF_PERSONA_HASH_KEY``, else the dev default
    (with a warning, once per process; ``warn=False`` defers it to the first use)."""
    key = key or os.environ.get(HASH_KEY_ENV)
    if not key:
        if warn:
            warn_dev_key()
        key = DEV_HASH_KEY
    return key.encode()


def warn_dev_key() -> None:
    """The development-key warning, at most once per process (``RLHF_PERSONA_QUIET_DEV_KEY=1``:
    never)."""
    global _warned_dev_key
    if not _warned_dev_key and os.environ.get("RLHF_PERSONA_QUIET_DEV_KEY") != "1":
        warnings.warn(
            f"{HASH_KEY_ENV} is not set: external ids are hashed with the public development "
            "key. Set a secret key in production.",
            stacklevel=3,
        )
        _warned_dev_key = True


class KeyedHasher:
    """HMAC-SHA256 of identifiers under one secret key (hex digests, 64 characters). With the
    development key it warns when it first hashes an external id (what the key protects), not
    when a store opens: commands that never see one (the loop's simulated users) stay quiet."""

    def __init__(self, key: str | None = None) -> None:
        self._key = resolve_hash_key(key, warn=False)
        self._dev = self._key == DEV_HASH_KEY.encode()

    def digest(self, namespace: str, value: str) -> str:
        # The namespace keeps a user id and an external id with the same text apart.
        return hmac.new(self._key, f"{namespace}\x00{value}".encode(), hashlib.sha256).hexdigest()

    def external_id(self, external_id: str) -> str:
        """Hash stored in ``users.external_id_hash`` and in the tombstone of a deleted user."""
        if self._dev:
            warn_dev_key()
        return self.digest("ext", external_id)

    def user_id(self, user_id: str) -> str:
        """Tombstone hash of a pseudonymous user id."""
        return self.digest("uid", user_id)

    def pseudonym(self, external_id: str) -> str:
        """Stable pseudonymous user id derived from an external id (``u_`` + 20 hex digits)."""
        return "u_" + self.external_id(external_id)[:20]


def hash_api_key(key: str) -> str:
    """API keys are random 32-byte secrets, so a plain SHA-256 is enough to store them."""
    return hashlib.sha256(key.encode()).hexdigest()


# Best effort, not a guarantee: free text can hold personal data in forms no pattern knows.
# Unicode word characters make internationalised addresses (IDN, EAI) match too.
_EMAIL = re.compile(r"[\w.%+\-]+@[\w\-]+(?:\.[\w\-]+)*\.[^\W\d_]{2,}")
# A run of digits with optional +country code, brackets and separators ( -./) and an optional
# extension; validated below by its digit count so that years, prices and short numbers stay.
_PHONE = re.compile(
    r"(?<![\w+])(?P<number>\+?\(?\d[\d\s().\-/]{5,}\d)"
    r"(?:\s*(?:ext\.?|extension|x|\#)\s*\d{1,6})?(?!\w)",
    re.IGNORECASE,
)
_NOT_PHONE = re.compile(  # dates and decimal numbers
    r"\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}|\d+\.\d+"
)
# 13-19 digits in groups (spaces or dashes): a payment card when the Luhn checksum holds.
_CARD = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])")
# Country code, check digits, up to 30 letters or digits (grouped by 4 when printed): an IBAN
# when the ISO 13616 mod-97 check holds.
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b", re.IGNORECASE)


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def iban_ok(text: str) -> bool:
    compact = text.replace(" ", "").upper()
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def _mask_card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return "[card]" if luhn_ok(digits) else match.group(0)


def _mask_iban(match: re.Match[str]) -> str:
    return "[iban]" if iban_ok(match.group(0)) else match.group(0)


def _mask_phone(match: re.Match[str]) -> str:
    number = match.group("number")
    digits = sum(ch.isdigit() for ch in number)
    if not 7 <= digits <= 15 or _NOT_PHONE.fullmatch(number.strip()):
        return match.group(0)
    return "[phone]"


def mask_pii(text: str | None) -> str | None:
    """Replace payment card numbers (Luhn-checked) with ``[card]``, IBANs (mod-97-checked)
    with ``[iban]``, e-mail addresses with ``[email]`` and phone numbers (with extensions) with
    ``[phone]``. Best effort: see docs/security.md."""
    if not text:
        return text
    text = _CARD.sub(_mask_card, _IBAN.sub(_mask_iban, text))
    return _PHONE.sub(_mask_phone, _EMAIL.sub("[email]", text))
