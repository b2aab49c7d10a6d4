"""Mutual proof of the job token on the hub's rank port, without sending the token.

Every connection a rank agent opens to the hub (its control link and each debug
session's data link) starts with a challenge-response (HMAC-SHA256 over fresh nonces):

1. hub -> rank: ``{"challenge": Nh}``
2. rank -> hub: its hello (rank, node, pid, kind ...) with ``nonce: Nr`` and
   ``mac: HMAC(token, "rank" | Nh | Nr | hello)``
3. hub -> rank: ``{"ok": true, "mac": HMAC(token, "hub" | Nr | Nh)}`` (or ``ok: false``)

The hub learns that the rank holds the token, the rank that it talks to the job's hub
(a process that took over the port after the hub died learns an HMAC over nonces it
cannot make the real hub reuse), and the hello's fields cannot be changed in transit.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from typing import Any

NONCE_BYTES = 16


def new_nonce() -> str:
    return secrets.token_hex(NONCE_BYTES)


def _mac(token: str, *parts: str) -> str:
    return hmac.new(token.encode(), "\0".join(parts).encode(), hashlib.sha256).hexdigest()


def _canonical(hello: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in hello.items() if k != "mac"}, sort_keys=True,
                      separators=(",", ":"))


def challenge() -> dict[str, Any]:
    """What the hub sends first on every rank connection."""
    return {"challenge": new_nonce()}


def rank_hello(token: str, challenge_nonce: str, **fields: Any) -> dict[str, Any]:
    """The rank's answer: its hello, a fresh nonce and the MAC that binds both nonces."""
    hello = {**fields, "nonce": new_nonce()}
    hello["mac"] = _mac(token, "rank", challenge_nonce, hello["nonce"], _canonical(hello))
    return hello


def check_rank(token: str, challenge_nonce: str, hello: Any) -> bool:
    """Whether ``hello`` proves the token for this challenge (constant-time compare)."""
    if not isinstance(hello, dict):
        return False
    nonce, mac = hello.get("nonce"), hello.get("mac")
    if not isinstance(nonce, str) or not isinstance(mac, str) or len(nonce) != 2 * NONCE_BYTES:
        return False
    return hmac.compare_digest(mac, _mac(token, "rank", challenge_nonce, nonce,
                                         _canonical(hello)))


def hub_proof(token: str, challenge_nonce: str, hello: dict[str, Any]) -> dict[str, Any]:
    """The hub's acceptance, proving the token back over the rank's nonce."""
    return {"ok": True, "mac": _mac(token, "hub", str(hello["nonce"]), challenge_nonce)}


def check_hub(token: str, challenge_nonce: str, hello: dict[str, Any], reply: Any) -> bool:
    """Whether the hub's reply proves it holds the token too."""
    if not isinstance(reply, dict) or reply.get("ok") is not True:
        return False
    mac = reply.get("mac")
    return isinstance(mac, str) and hmac.compare_digest(
        mac, _mac(token, "hub", str(hello["nonce"]), challenge_nonce))
