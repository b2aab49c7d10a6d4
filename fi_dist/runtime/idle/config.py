"""The culler's configuration on the wire: :class:`~fi_dist.spec.IdleSpec` <-> FI_DIST_IDLE_*.

A launcher turns the spec into env entries for every node (:func:`idle_env`); the node
agent reads them back (:func:`idle_spec_from_env`). Both sides meet only in
:mod:`fi_dist.env_vars` and :mod:`fi_dist.spec` (shared core), so nothing here imports
the client side.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from fi_dist import env_vars as ev
from fi_dist.errors import ConfigError
from fi_dist.spec import IdleSpec

IDLE_EXIT_CODE = 75
"""Exit code of a node agent whose node the culler ended.

In 1..127, so ``restartPolicy: ExitCode`` (and the local launcher's ``--max-restarts``)
treats it as final: restarting a job nobody uses would only hold the GPUs again. It
differs from 1 (a bug), 143 (SIGTERM / preemption, retried) and 137 (SIGKILL).
"""

_FLOATS = {
    "timeout": ev.FI_DIST_IDLE_TIMEOUT,
    "threshold": ev.FI_DIST_IDLE_THRESHOLD,
    "interval": ev.FI_DIST_IDLE_INTERVAL,
    "warn_lead": ev.FI_DIST_IDLE_WARN_LEAD,
    "hang_factor": ev.FI_DIST_IDLE_HANG_FACTOR,
}
_STRINGS = {
    "sampler": ev.FI_DIST_IDLE_SAMPLER,
    "webhook": ev.FI_DIST_IDLE_WEBHOOK,
    "smtp": ev.FI_DIST_IDLE_SMTP,
    "email_from": ev.FI_DIST_IDLE_EMAIL_FROM,
}


def idle_env(spec: IdleSpec) -> dict[str, str]:
    """The FI_DIST_IDLE_* entries for a node's env; empty when culling is off."""
    if not spec.enabled:
        return {}
    env = {name: repr(float(getattr(spec, field))) for field, name in _FLOATS.items()}
    env.update({name: getattr(spec, field) for field, name in _STRINGS.items()
                if getattr(spec, field) is not None})
    if spec.email:
        env[ev.FI_DIST_IDLE_EMAIL] = ",".join(spec.email)
    if spec.dry_run:
        env[ev.FI_DIST_IDLE_DRY_RUN] = "1"
    return env


def idle_spec_from_env(env: Mapping[str, str] | None = None) -> IdleSpec | None:
    """The culler's spec from FI_DIST_IDLE_*; None when FI_DIST_IDLE_TIMEOUT is unset.

    Raises:
        ConfigError: a variable that is not a number, or an invalid combination.
    """
    env = os.environ if env is None else env
    if not env.get(ev.FI_DIST_IDLE_TIMEOUT):
        return None
    kwargs: dict[str, object] = {"enabled": True}
    for field, name in _FLOATS.items():
        raw = env.get(name)
        if raw:
            try:
                kwargs[field] = float(raw)
            except ValueError:
                raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    for field, name in _STRINGS.items():
        if env.get(name):
            kwargs[field] = env[name]
    if env.get(ev.FI_DIST_IDLE_EMAIL):
        kwargs["email"] = env[ev.FI_DIST_IDLE_EMAIL]
    kwargs["dry_run"] = env.get(ev.FI_DIST_IDLE_DRY_RUN, "") in ("1", "true", "yes")
    try:
        return IdleSpec(**kwargs)  # type: ignore[arg-type]
    except ConfigError as exc:
        raise ConfigError(f"FI_DIST_IDLE_*: {exc}") from None
