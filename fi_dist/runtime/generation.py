"""Signed resume generations: what rank 0 puts on the rendezvous store, what every rank checks.

The job's rendezvous store (torch's TCPStore) listens on every interface and has no
authentication: whoever reaches its port reads and writes any key. So the store only
*carries* a generation; a rank applies one only when it proves it came from the job's
rank 0, signed with the job token, which itself never goes on the store::

    key  = HMAC-SHA256(token, "fi-dist resume generation v1")
    body = canonical JSON {"v": 1, "run": run id, "attempt": job attempt,
                           "restart": torchelastic restart count, "gen": N,
                           "signed_at": unix time, "files": {path: base64}}
    mac  = HMAC-SHA256(key, body)          stored as {"body": body, "mac": hex}

The derived key keeps this MAC apart from the token's other use (the hub handshake).
A rank refuses a generation, before writing a byte, when the MAC does not verify
(compared in constant time), when the body names another generation number than the
one it was found under (an old generation replayed under a new number), another run,
job attempt or worker-group restart (a generation of another job or attempt that shares
the token), or was signed before this attempt's watcher started (less a clock-skew
allowance: a previous pod's generation replayed into a fresh store).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fi_dist import contract
from fi_dist import env_vars as ev

VERSION = 1
GEN_KEY = "fi_dist/resume/gen"
"""Store counter: the newest generation number (bumped after its payload is set)."""
PAYLOAD_KEY = "fi_dist/resume/payload/{}"
MAX_PAYLOAD = 64 << 20
"""Bytes: a bigger value on the store is refused before it is even parsed."""
CLOCK_SKEW = 60.0
"""Seconds a generation may seem signed before a watcher started (node clocks differ)."""
_KEY_LABEL = b"fi-dist resume generation v1"


class GenerationRefused(Exception):
    """A generation on the store this rank must not apply (forged, replayed, other job)."""


@dataclass(frozen=True)
class Scope:
    """What a generation is bound to besides its number: one attempt of one job."""

    run_id: str
    """The job's run id (FI_DIST_RUN_ID, else torchelastic's run id or, in a pod without
    torchrun, the Flyte execution's name)."""
    attempt: int
    """The whole job's restart attempt (FI_DIST_ATTEMPT)."""
    restart: int
    """torchelastic's worker-group restart count (every resume restarts it once)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Scope:
        """The scope every rank of this attempt computes alike from its environment."""
        env = os.environ if env is None else env
        job = contract.current() if env is os.environ else contract.JobContract.from_env(env)
        return cls(run_id=(job.run_id or env.get(ev.TORCHELASTIC_RUN_ID)
                           or env.get(ev.FLYTE_INTERNAL_EXECUTION_ID, "")),
                   attempt=job.attempt,
                   restart=int(env.get(ev.TORCHELASTIC_RESTART_COUNT) or 0))

    def describe(self) -> str:
        return f"run {self.run_id or '?'} attempt {self.attempt} restart {self.restart}"


def _key(token: str) -> bytes:
    if not token:
        raise ValueError("signing a resume generation needs the job token")
    return hmac.new(token.encode(), _KEY_LABEL, hashlib.sha256).digest()


def sign(token: str, scope: Scope, gen: int, files: Mapping[str, bytes],
         now: float | None = None) -> str:
    """The store value of generation ``gen`` carrying ``files``, signed with ``token``."""
    body = json.dumps({
        "v": VERSION, "run": scope.run_id, "attempt": scope.attempt,
        "restart": scope.restart, "gen": gen,
        "signed_at": round(time.time() if now is None else now, 3),
        "files": {rel: base64.b64encode(data).decode() for rel, data in files.items()},
    }, sort_keys=True, separators=(",", ":"))
    mac = hmac.new(_key(token), body.encode(), hashlib.sha256).hexdigest()
    return json.dumps({"body": body, "mac": mac})


def verify(raw: bytes | str, token: str, scope: Scope, gen: int,
           not_before: float = 0.0) -> dict[str, bytes]:
    """The files of a store value, once it proved to be generation ``gen`` of ``scope``.

    Raises:
        GenerationRefused: why it must not be applied (the message says it).
    """
    if len(raw) > MAX_PAYLOAD:
        raise GenerationRefused(f"{len(raw)} bytes, over the {MAX_PAYLOAD}-byte cap")
    try:
        outer = json.loads(raw)
        body, mac = outer["body"], outer["mac"]
    except (ValueError, TypeError, KeyError):
        raise GenerationRefused("not a signed generation (no body and MAC)") from None
    if not isinstance(body, str) or not isinstance(mac, str):
        raise GenerationRefused("not a signed generation (body and MAC must be text)")
    expected = hmac.new(_key(token), body.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), mac.encode()):
        raise GenerationRefused("bad signature: not signed with this job's token")
    data: dict[str, Any] = json.loads(body)  # signed by rank 0: well-formed
    if data.get("v") != VERSION:
        raise GenerationRefused(f"signed with format version {data.get('v')!r}, not {VERSION}")
    if data.get("gen") != gen:
        raise GenerationRefused(f"signed as generation {data.get('gen')!r} but found as "
                                f"generation {gen} (an old generation replayed)")
    signed = Scope(str(data.get("run")), int(data.get("attempt", -1)),
                   int(data.get("restart", -1)))
    if signed != scope:
        raise GenerationRefused(f"signed for {signed.describe()}, this rank is in "
                                f"{scope.describe()}")
    signed_at = float(data.get("signed_at", 0))
    if signed_at < not_before:
        raise GenerationRefused(f"signed {not_before - signed_at:.0f}s before this rank's "
                                "watcher started (replayed from an earlier attempt)")
    try:
        return {str(rel): base64.b64decode(b64, validate=True)
                for rel, b64 in data.get("files", {}).items()}
    except (binascii.Error, TypeError, AttributeError):
        raise GenerationRefused("file contents are not base64") from None


def publish(store: Any, token: str, scope: Scope, files: Mapping[str, bytes]) -> int:
    """Sign ``files`` as the next generation and put it on the store; returns its number.

    The payload goes first and the counter after it, so a watcher that sees the number
    finds the payload. One publisher per job (rank 0's endpoint serialises its calls).
    """
    gen = int(store.add(GEN_KEY, 0)) + 1
    store.set(PAYLOAD_KEY.format(gen), sign(token, scope, gen, files))
    store.add(GEN_KEY, 1)
    return gen


def latest(store: Any) -> int:
    """The newest generation number on the store (0: none)."""
    return int(store.add(GEN_KEY, 0))


def payload(store: Any, gen: int) -> bytes | None:
    """Generation ``gen``'s raw store value, None when it is not there (never waits)."""
    key = PAYLOAD_KEY.format(gen)
    if not store.check([key]):
        return None
    return bytes(store.get(key))
