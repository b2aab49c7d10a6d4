"""``fi-dist status|logs|cancel|attach|chaos|stacks|eval [JOB]``: commands on one job.

The CLI parses; these functions find the job's launcher and call the
:class:`~fi_dist.launcher.Launcher` interface, nothing launcher-specific. Without JOB
the newest run under the working directory is meant; a JOB that names a run there
finds its own launcher; otherwise ``--launcher`` (default pytorchjob) says where it
runs. API errors from a cluster become :class:`~fi_dist.errors.LauncherError` with the
server's reason.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import stat
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fi_dist import rundir
from fi_dist.errors import LauncherError
from fi_dist.launcher import Attachment, Fault, JobStatus, Launcher

DEFAULT_CLUSTER_LAUNCHER = "pytorchjob"


def add_job_arguments(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("job", nargs=None if required else "?",
                   help="job id: a run id (local, ray), or NAME / NAMESPACE:NAME (clusters); "
                        "default: the newest run here" if not required else
                        "job id: a run id (local, ray), or NAME / NAMESPACE:NAME (clusters)")
    p.add_argument("--launcher", default=None,
                   help="the launcher that started the job (default: the run's own, else "
                        f"{DEFAULT_CLUSTER_LAUNCHER})")
    p.add_argument("--namespace", default=None, help="Kubernetes namespace (or NAMESPACE:NAME)")


def resolve(args: argparse.Namespace) -> tuple[Launcher, str]:
    """The job's launcher and id, from JOB / --launcher / the newest run here.

    Raises:
        NoRunningJobError: no JOB and no run under the working directory.
    """
    from fi_dist.registry import get_launcher

    job = args.job
    if job is None:
        run = rundir.current_run(require_alive=False)
        return get_launcher(args.launcher or run.launcher()), run.run_id
    if args.namespace and ":" not in job:
        job = f"{args.namespace}:{job}"
    local = rundir.RunDir(rundir.root() / "runs" / job)
    name = args.launcher or (local.launcher() if local.exists() else DEFAULT_CLUSTER_LAUNCHER)
    return get_launcher(name), job


@contextlib.contextmanager
def api_errors() -> Iterator[None]:
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


def format_status(st: JobStatus) -> str:
    lines = [f"{st.job_id}: {st.state.value}" + (f" ({st.message})" if st.message else "")]
    if st.ranks:
        lines.append(f"{'rank':>4}  {'node':>4}  {'pid':>7}  state")
        for rank, row in sorted(st.ranks.items()):
            extra = (f"  [idle: {row['idle']}, {row['idle_for']:.0f}s]" if "idle" in row
                     else "")
            if row.get("network"):  # fi-dist chaos faults on the rank's node
                extra += f"  [network: {row['network']}]"
            if (c := row.get("checkpoint")) and isinstance(c, dict) and not c.get("done"):
                extra += (f"  [checkpoint {c.get('op')} step {c.get('step')}: "
                          f"{c.get('bytes', 0) >> 20}/{c.get('total', 0) >> 20} MiB, "
                          f"{c.get('mib_s', 0):.0f} MiB/s]")
            lines.append(f"{rank:>4}  {row.get('node')!s:>4}  {row.get('pid')!s:>7}  "
                         f"{row.get('state')}{extra}")
    if st.diagnosis:
        lines.append(f"diagnosis: {st.diagnosis}")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    launcher, job = resolve(args)
    with api_errors():
        st = launcher.status(job)
    if args.json:
        print(json.dumps({"job_id": st.job_id, "state": st.state.value, "message": st.message,
                          "exitcode": st.exitcode,
                          "ranks": [{"rank": r, **row} for r, row in sorted(st.ranks.items())],
                          "idle": {str(n): v for n, v in st.idle.items()},
                          "diagnosis": st.diagnosis}, indent=2))
    else:
        print(format_status(st))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    launcher, job = resolve(args)
    with api_errors():
        for line in launcher.logs(job, rank=args.rank):
            print(line)
    return 0


def cmd_stacks(args: argparse.Namespace) -> int:
    """Every rank's stack, merged (ranks grouped by identical stack), and the diagnosis."""
    launcher, job = resolve(args)
    with api_errors():
        report = launcher.stacks(job, all_threads=args.all_threads)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.text())
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """EXPR in every stopped rank of a --debug job, through its hub; ranks grouped by value."""
    from fi_dist.dap_client import DapError
    from fi_dist.rank_eval import evaluate_all

    launcher, job = resolve(args)
    with api_errors():
        attachment = launcher.attach(job)
    try:
        result = evaluate_all(attachment.config, args.expression, frame=args.frame,
                              ranks=args.rank)
    except (DapError, OSError) as exc:
        raise LauncherError(f"cannot evaluate through the hub of {job}: {exc}") from None
    finally:
        attachment.close()
    print(json.dumps(result.to_json(), indent=2) if args.json else result.text())
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    launcher, job = resolve(args)
    with api_errors():
        launcher.cancel(job)
    print(f"cancelled {job}")
    return 0


def cmd_chaos(args: argparse.Namespace) -> int:
    """``fi-dist chaos --node K FAULT``: the job's launcher applies it and says what it did."""
    fault = Fault(kind=args.fault, ms=getattr(args, "ms", 0.0),
                  jitter_ms=getattr(args, "jitter", 0.0), pct=getattr(args, "pct", 0.0))
    launcher, job = resolve(args)
    print(f"fi-dist: {launcher.chaos(job, args.node, fault)}")
    return 0


def cmd_attach(args: argparse.Namespace, wait: Callable[[], None] | None = None) -> int:
    """Print the attach config, write it to .vscode/launch.json, hold any port forward."""
    launcher, job = resolve(args)
    with api_errors():
        attachment = launcher.attach(job, local_port=args.local_port)
    config: dict[str, Any] = attachment.config
    print(json.dumps(config, indent=2))
    if args.print_config:
        print(token_note(attachment, None), file=sys.stderr)
        attachment.close()
        return 0
    from fi_dist.launchjson import LaunchJsonError, attach_configurations, write_configurations

    try:
        path = write_configurations(Path.cwd(), attach_configurations(config))
    except (LaunchJsonError, OSError) as exc:  # the file is named and left as it was
        attachment.close()
        raise LauncherError(str(exc)) from None
    print(token_note(attachment, path), file=sys.stderr)
    where = (f"forwarding 127.0.0.1:{attachment.forward.local_port} -> the hub of {job}; "
             if attachment.forward is not None else "")
    print(f"fi-dist: {where}'{config['name']}' written to {path}; start it in VSCode's Run "
          "and Debug view (it needs the fi-dist extension: `fi-dist vscode install`; with "
          "only Microsoft's Python Debugger use the '(Python Debugger)' one)."
          + (" Ctrl-C ends the forward." if attachment.forward else ""), file=sys.stderr)
    if attachment.forward is None:
        return 0
    try:
        (wait or _forever)()
    except KeyboardInterrupt:
        pass
    finally:
        attachment.close()
    return 0


def token_note(attachment: Attachment, written: Path | None) -> str:
    """Where the job token is on this machine and how long it is good for (for stderr)."""
    files = list(dict.fromkeys([*attachment.token_files, *([str(written)] if written else [])]))
    lines = ["fi-dist: the job token (anyone holding it controls every rank) is in:"]
    for f in files:
        try:
            mode = f"{stat.S_IMODE(os.stat(f).st_mode):04o}"
        except OSError:
            mode = "not readable here"
        lines.append(f"  {f} (mode {mode})")
    if not files:
        lines.append("  (no file here: the configuration above)")
    lines.append(f"  It is valid {attachment.token_lifetime}.")
    return "\n".join(lines)


def _forever() -> None:
    while True:
        time.sleep(3600)
