"""``fi-dist status|logs|cancel|attach JOB --launcher L``: commands on a submitted job.

The CLI parses; these functions find the launcher by name and call its interface
(status/logs/cancel, and ``attach`` where the launcher has one). API errors from a
cluster become :class:`~fi_dist.errors.LauncherError` with the server's reason.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fi_dist.errors import LauncherError


def add_job_arguments(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("job", nargs=None if required else "?",
                   help="job id: NAME or NAMESPACE:NAME (cluster launchers), run id (ray)")
    p.add_argument("--launcher", default="pytorchjob",
                   help="the launcher that started the job (default pytorchjob)")
    p.add_argument("--namespace", default=None, help="Kubernetes namespace (or NAMESPACE:NAME)")


def _job_id(args: argparse.Namespace) -> str:
    if args.namespace and ":" not in args.job:
        return f"{args.namespace}:{args.job}"
    return args.job


@contextlib.contextmanager
def _api_errors() -> Iterator[None]:
    try:
        yield
    except LauncherError:
        raise
    except Exception as exc:  # kubernetes ApiException, urllib3 errors: say what failed
        status = getattr(exc, "status", None)
        reason = getattr(exc, "reason", None) or str(exc)
        if status == 404:
            raise LauncherError(f"not found: {reason}") from None
        if type(exc).__module__.startswith(("kubernetes", "urllib3")):
            raise LauncherError(f"the cluster refused: {status or ''} {reason}".strip()) from None
        raise


def _launcher(args: argparse.Namespace) -> Any:
    from fi_dist.registry import get_launcher

    return get_launcher(args.launcher)


def cmd_job_status(args: argparse.Namespace) -> int:
    with _api_errors():
        st = _launcher(args).status(_job_id(args))
    if getattr(args, "json", False):
        print(json.dumps({"job_id": st.job_id, "state": st.state.value, "message": st.message,
                          "exitcode": st.exitcode}, indent=2))
    else:
        print(f"{st.job_id}: {st.state.value}" + (f" ({st.message})" if st.message else ""))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    with _api_errors():
        for line in _launcher(args).logs(_job_id(args), rank=args.rank):
            print(line)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with _api_errors():
        _launcher(args).cancel(_job_id(args))
    print(f"cancelled {_job_id(args)}")
    return 0


def cmd_remote_attach(args: argparse.Namespace,
                      wait: Callable[[], None] | None = None) -> int:
    """Port-forward to the job's hub, print and write the attach config, hold the forward."""
    launcher = _launcher(args)
    if not hasattr(launcher, "attach"):
        raise LauncherError(f"launcher {args.launcher!r} cannot attach to a job by id")
    with _api_errors():
        fwd, config = launcher.attach(_job_id(args), local_port=args.local_port)
    print(json.dumps(config, indent=2))
    if args.print_config:
        fwd.close()
        return 0
    from fi_dist.launchjson import LaunchJsonError, write_configuration

    try:
        path = write_configuration(Path.cwd(), config)
    except (LaunchJsonError, OSError) as exc:  # the file is named and left as it was
        fwd.close()
        raise LauncherError(str(exc)) from None
    print(f"fi-dist: forwarding 127.0.0.1:{fwd.local_port} -> the hub of {_job_id(args)}; "
          f"'{config['name']}' written to {path}. Ctrl-C ends the forward.", file=sys.stderr)
    try:
        (wait or _forever)()
    except KeyboardInterrupt:
        pass
    finally:
        fwd.close()
    return 0


def _forever() -> None:
    while True:
        time.sleep(3600)
