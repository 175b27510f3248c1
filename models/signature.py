"""Webhook signatures, as Voucherify documents them.

``x-voucherify-signature`` is the lowercase hex HMAC-SHA256, keyed with the project's
webhook secret, of the signed text. Voucherify's "Introduction to Voucherify webhooks"
(Authentication) says what that text is: for a JSON payload, the JSON with every whitespace
character outside strings removed; for a plain-string payload, the string as it is. The
bytes on the wire need not be that text: a proxy, a relay or a resend from the dashboard
may indent the JSON. So a body is accepted when the signature matches either its compact
text or its raw bytes, under any of the configured secrets (more than one while a secret
is being rotated).

Compacting needs no JSON parsing and is linear in the body's size: one regular-expression
pass splits the body at its strings, which are kept exactly as sent (whitespace, escapes
and non-ASCII bytes inside them), and whitespace is dropped from the text between them.
Removing whitespace can only join two tokens of a body that is not valid JSON (``1 2``,
``tru e``), and such a body is refused when it is parsed, so compacting never lets a
changed valid payload pass.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "SIGNATURE_HEADER",
    "SignatureMatch",
    "compact_json",
    "parse_secrets",
    "sign",
    "verify_signature",
]

SIGNATURE_HEADER = "x-voucherify-signature"

# A JSON string, to its closing quote or to the end of an unterminated one. Possessive
# quantifiers and the optional closing quote: no match ever backtracks, so the split is
# linear even in a hostile body.
_STRING = re.compile(rb'("(?:[^"\\]++|\\.)*+"?)', re.DOTALL)
_JSON_WHITESPACE = b" \t\n\r"


@dataclass(frozen=True)
class SignatureMatch:
    """Which secret (by position, from 0) and which text of the body the signature signs."""

    secret_index: int
    signed: Literal["compact", "raw"]


def sign(text: bytes, secret: bytes) -> str:
    """Lowercase hex HMAC-SHA256 of ``text``: the signature Voucherify sends for it."""
    return hmac.new(secret, text, hashlib.sha256).hexdigest()


def compact_json(body: bytes) -> bytes:
    """``body`` with every whitespace character outside JSON strings removed."""
    parts = _STRING.split(body)  # text between strings at even positions, strings at odd
    parts[::2] = [between.translate(None, _JSON_WHITESPACE) for between in parts[::2]]
    return b"".join(parts)


def parse_secrets(value: str) -> list[bytes]:
    """The secrets of a comma-separated list (the current one and, while rotating, the
    previous one); blanks around each and empty items are dropped."""
    return [item.strip().encode("utf-8") for item in value.split(",") if item.strip()]


def verify_signature(
    body: bytes, signature: str, secrets: Sequence[bytes]
) -> SignatureMatch | None:
    """The match of ``signature`` for ``body`` under one of ``secrets``, or None.

    Every comparison is constant-time. A body that is a JSON object or array is checked as
    its compact text first (what Voucherify signs), then as sent.
    """
    given = signature.strip().lower().encode("utf-8", "replace")
    texts: list[tuple[Literal["compact", "raw"], bytes]] = [("raw", body)]
    if body.lstrip(_JSON_WHITESPACE)[:1] in (b"{", b"["):
        compact = compact_json(body)
        if compact != body:
            texts.insert(0, ("compact", compact))
    for index, secret in enumerate(secrets):
        for signed, text in texts:
            if hmac.compare_digest(sign(text, secret).encode("ascii"), given):
                return SignatureMatch(index, signed)
    return None
