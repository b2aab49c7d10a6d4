"""``fi-dist``: run, preempt and inspect distributed training jobs.

Subcommands: run, preempt, chaos, status, stacks, eval, attach, logs, cancel, resume.
Flag names follow torchrun's.
"""

from __future__ import annotations

import argparse
import sys

from fi_dist import procs, rundir
from fi_dist.config import load_spec
from fi_dist.errors import ConfigError, FiDistError
from fi_dist.job_commands import (
    add_job_arguments,
    api_errors,
    cmd_attach,
    cmd_cancel,
    cmd_chaos,
    cmd_eval,
    cmd_logs,
    cmd_stacks,
    cmd_status,
)
from fi_dist.spec import NETWORKS, JobSpec

# Flags of `run` that map onto JobSpec fields; None means "not given on the command line".
_RUN_FIELDS = ("nnodes", "nproc_per_node", "master_port", "launcher", "name",
               "max_restarts", "grace_period", "image", "namespace", "checkpoint_uri",
               "network_policy", "module", "no_python", "pod_entrypoint", "network",
               "node_timeout", "hang_timeout", "hang_doctor")
# `--idle-X` flags map onto IdleSpec field X (docs/idle.md); any of them turns culling on.
_IDLE_FIELDS = ("timeout", "threshold", "interval", "warn_lead", "dry_run", "sampler",
                "hang_factor", "webhook", "email", "smtp", "email_from")


def _add_idle_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("idle culling", "end nodes whose GPUs (or CPU ranks) stay idle "
                             "with no debugger activity; any --idle* flag turns it on")
    g.add_argument("--idle", action="store_true", help="cull idle nodes with the defaults")
    g.add_argument("--idle-timeout", type=float, metavar="SECONDS",
                   help="idle window before a node is ended (default 1800)")
    g.add_argument("--idle-threshold", type=float, metavar="PERCENT",
                   help="utilisation under which a device is idle (default 5)")
    g.add_argument("--idle-interval", type=float, metavar="SECONDS",
                   help="seconds between samples (default 10)")
    g.add_argument("--idle-warn-lead", type=float, metavar="SECONDS",
                   help="warn this long before ending (default 300, at most timeout/2)")
    g.add_argument("--idle-dry-run", action="store_true", default=None,
                   help="only report idle nodes, never end them")
    g.add_argument("--idle-sampler", choices=("auto", "nvml", "cpu"),
                   help="utilisation source (default auto: NVML if it sees a GPU)")
    g.add_argument("--idle-hang-factor", type=float, metavar="K",
                   help="report a busy rank hung after K median step times (default 10)")
    g.add_argument("--idle-webhook", metavar="URL", help="POST notifications as JSON here")
    g.add_argument("--idle-email", metavar="ADDR[,ADDR]", help="mail notifications here")
    g.add_argument("--idle-smtp", metavar="HOST:PORT", help="SMTP relay (default localhost:25)")
    g.add_argument("--idle-email-from", metavar="ADDR", help="sender of the mail")


def _add_debug_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("debugging", "debugpy in every rank, one hub port for the IDE "
                             "(docs/debug.md)")
    g.add_argument("--debug", action="store_true", default=None,
                   help="start debugpy in every rank and the debug hub beside rank 0")
    g.add_argument("--debug-port", type=int, metavar="PORT",
                   help="the hub's IDE port (default 5678; 0 = a free one, see launch.json)")
    g.add_argument("--debug-host", metavar="ADDR",
                   help="address the IDE port binds (default 127.0.0.1)")
    g.add_argument("--wait-for-client", action="store_true", default=None,
                   help="hold every rank before the first line until a client attaches")
    g.add_argument("--post-mortem-wait", type=float, metavar="SECONDS",
                   help="a rank that raised waits this long for a client before failing")
    g.add_argument("--code-server", action="store_true", default=None,
                   help="also start code-server (VSCode in the browser) on node 0 with the "
                        "fi-dist extension, offline; prints its URL and password file")
    g.add_argument("--code-server-port", type=int, metavar="PORT",
                   help="code-server's port on 127.0.0.1 (default 8080; 0 = a free one)")
    g.add_argument("--extension", action="append", dest="extensions", metavar="VSIX",
                   help="another .vsix for that code-server (repeatable; implies "
                        "--code-server)")
    g.add_argument("--debug-trace", choices=("lazy", "eager"), default=None,
                   help="start pydevd's tracing only once a breakpoint or pause needs it "
                        "(lazy, the default: no step-time cost before) or from the first "
                        "line (eager)")


def _add_attach(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("attach", help="the IDE attach configuration of a --debug job "
                       "(default: the newest run here; a cluster job is port-forwarded)")
    p.add_argument("--print", action="store_true", dest="print_config",
                   help="print the 'fi-dist: attach all ranks' configuration as JSON only")
    add_job_arguments(p, required=False)
    p.add_argument("--local-port", type=int, default=None,
                   help="local port of the forward to the hub (default: the hub's port)")
    p.set_defaults(func=cmd_attach)


def _add_job_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("logs", help="log lines of a cluster or Ray job (per rank)")
    add_job_arguments(p)
    p.add_argument("--rank", type=int, default=None, help="only this rank's lines")
    p.set_defaults(func=cmd_logs)
    p = sub.add_parser("cancel", help="cancel a cluster job")
    add_job_arguments(p)
    p.set_defaults(func=cmd_cancel)


# `run` flags that map onto DebugSpec fields; any of them turns debugging on.
_DEBUG_FLAGS = {"enabled": "debug", "port": "debug_port", "host": "debug_host",
                "wait_for_client": "wait_for_client", "post_mortem_wait": "post_mortem_wait",
                "trace": "debug_trace", "code_server": "code_server",
                "code_server_port": "code_server_port", "extensions": "extensions"}


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="launch a training script on N nodes x M ranks",
                       description="Launch SCRIPT like torchrun, on the chosen launcher.")
    p.add_argument("--launcher", default=None, help="backend: local (default), ...")
    p.add_argument("--nnodes", type=int, default=None, help="number of nodes (default 1)")
    p.add_argument("--nproc-per-node", "--nproc_per_node", dest="nproc_per_node", type=int,
                   default=None, help="ranks per node (default 1)")
    p.add_argument("--master-port", "--master_port", dest="master_port", type=int,
                   default=None, help="rendezvous port on node 0 (default 29500; 0 = free port)")
    p.add_argument("--max-restarts", dest="max_restarts", type=int, default=None,
                   help="restart the whole job up to K times after a retryable failure")
    p.add_argument("--grace", dest="grace_period", type=float, default=None,
                   help="seconds from SIGTERM to SIGKILL when stopping ranks (default 30)")
    p.add_argument("--name", default=None, help="job name (DNS-1035)")
    p.add_argument("--image", default=None, help="container image (cluster launchers)")
    p.add_argument("--namespace", default=None, help="Kubernetes namespace")
    p.add_argument("--ckpt-uri", dest="checkpoint_uri", default=None,
                   help="checkpoint directory or URI handed to the job as FI_DIST_CKPT_DIR")
    p.add_argument("--network-policy", dest="network_policy", action="store_true",
                   default=None, help="pytorchjob: also create a NetworkPolicy that lets only "
                   "the job's own pods reach its pods (rendezvous and hub rank ports)")
    p.add_argument("-m", "--module", action="store_true", default=None,
                   help="run SCRIPT as a module, like python -m (torchrun's -m)")
    p.add_argument("--no-python", dest="no_python", action="store_true", default=None,
                   help="SCRIPT is a program (on PATH or a path), run without python; a "
                   "Python console script (pyflyte-execute) still runs in the rank's python")
    p.add_argument("--pod-entrypoint", dest="pod_entrypoint", action="store_true",
                   default=None, help="local: each node runs the target itself as its pod's "
                   "entrypoint with the operator's pod env, no node agent or torchrun "
                   "(a Flyte PyTorch task's pods; docs/flyte.md)")
    p.add_argument("--network", choices=NETWORKS, default=None,
                   help="local: loopback (default: every node on 127.0.0.x) or netns (each "
                   "node in its own network namespace with eth0, pod IP and pod DNS names; "
                   "root; faults with fi-dist chaos)")
    p.add_argument("--node-timeout", dest="node_timeout", type=float, default=None,
                   metavar="S", help="local: a node whose agent is unreachable for S seconds "
                   "is lost: the attempt fails (retryable) (default 60; 0 = never)")
    p.add_argument("--hang-timeout", dest="hang_timeout", type=float, default=None,
                   metavar="SECONDS", help="no collective completed and no step on any rank "
                   "for this long: capture every rank's stack, end the job, name the rank "
                   "that is behind as root cause (docs/hangs.md)")
    p.add_argument("--no-hang-doctor", dest="hang_doctor", action="store_false", default=None,
                   help="no collective ledger and stack dumper in the ranks (fi-dist stacks "
                   "then has nothing to read)")
    p.add_argument("--config", default=None, help="job spec file (.toml/.yaml) from configs/")
    _add_idle_flags(p)
    _add_debug_flags(p)
    p.add_argument("--dry-run", action="store_true", help="print what would run and exit")
    p.add_argument("--plain", action="store_true", help="no live table, prefixed lines only")
    p.add_argument("script", nargs="?", help="training script")
    p.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments after SCRIPT (or --)")
    p.set_defaults(func=cmd_run)


def _add_preempt(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("preempt", help="simulate the kubelet preempting a node of the local job")
    p.add_argument("--node", type=int, default=0, help="node index to preempt (default 0)")
    p.add_argument("--grace", type=float, default=30.0, help="seconds before SIGKILL (default 30)")
    p.set_defaults(func=cmd_preempt)


def _add_chaos(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chaos", help="network faults on node K of the running --network netns "
                       "job: partition, heal, delay MS, loss PCT",
                       description="Break node K's network while the job runs (recorded in "
                       "the run directory and the job summary). heal clears every fault.")
    p.add_argument("--node", type=int, required=True, help="the node index")
    p.add_argument("--job", dest="job", default=None,
                   help="run id (default: the newest run here)")
    faults = p.add_subparsers(dest="fault", required=True)
    faults.add_parser("partition", help="the node's link goes down: nothing in, nothing out")
    faults.add_parser("heal", help="every fault of the node off")
    d = faults.add_parser("delay", help="hold each packet the node sends MS milliseconds")
    d.add_argument("ms", type=float, help="milliseconds (0 removes the delay)")
    d.add_argument("--jitter", type=float, default=0.0, metavar="MS",
                   help="+- this many milliseconds, uniformly")
    loss = faults.add_parser("loss", help="drop PCT percent of the packets the node sends")
    loss.add_argument("pct", type=float, help="percent (0 removes the loss)")
    p.set_defaults(func=cmd_chaos, launcher=None, namespace=None)


def _add_status(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="a job's state and every rank's (default: the newest "
                       "run here)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_job_arguments(p, required=False)
    p.set_defaults(func=cmd_status)


def _add_stacks(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stacks", help="every rank's Python stack, merged (ranks grouped by "
                       "identical stack), and which rank is behind; nothing is paused, no "
                       "--debug needed")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--all-threads", action="store_true",
                   help="every thread of every rank, not only the main threads")
    add_job_arguments(p, required=False)
    p.set_defaults(func=cmd_stacks)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate EXPR in every stopped rank of a --debug job and "
                       "group the ranks by value (tensors: shape, dtype, checksum, max "
                       "difference to rank 0)")
    p.add_argument("expression", help="a Python expression, evaluated in each rank's frame")
    p.add_argument("--frame", default=None, metavar="FUNCTION",
                   help="the innermost frame of this function (default: the top frame of "
                   "the user's code)")
    p.add_argument("--rank", type=int, action="append", default=None,
                   help="only this rank (repeatable; default: every rank)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_job_arguments(p, required=False)
    p.set_defaults(func=cmd_eval)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fi-dist", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_preempt(sub)
    _add_chaos(sub)
    _add_status(sub)
    _add_stacks(sub)
    _add_eval(sub)
    _add_attach(sub)
    _add_resume(sub)
    _add_job_commands(sub)
    from fi_dist.editor import commands as editor_commands

    editor_commands.add_parser(sub)
    return parser


def spec_from_args(args: argparse.Namespace) -> JobSpec:
    """Merge ``--config`` (if any) with the flags given on the command line."""
    script_args = list(args.script_args or [])
    if script_args and script_args[0] == "--":
        script_args = script_args[1:]
    given = {f: getattr(args, f) for f in _RUN_FIELDS if getattr(args, f) is not None}
    idle = {f: getattr(args, f"idle_{f}") for f in _IDLE_FIELDS
            if getattr(args, f"idle_{f}", None) is not None}
    if idle or getattr(args, "idle", False):
        given["idle"] = {**idle, "enabled": True}
    debug = {f: getattr(args, a) for f, a in _DEBUG_FLAGS.items()
             if getattr(args, a, None) is not None}
    if debug:
        if debug.get("extensions") or "code_server_port" in debug:
            debug["code_server"] = True
        given["debug"] = {**debug, "enabled": True}
    if args.script:
        given["script"] = args.script
        given["script_args"] = script_args
    if args.config:
        base = load_spec(args.config).to_dict()
        if "idle" in given:
            given["idle"] = {**base.get("idle", {}), **given["idle"]}
        if "debug" in given:
            given["debug"] = {**base.get("debug", {}), **given["debug"]}
        base.update(given)
        from fi_dist.config import spec_from_dict

        return spec_from_dict(base, source=args.config)
    if "script" not in given:
        raise ConfigError("no training script given (fi-dist run [flags] SCRIPT [-- ARGS])")
    return JobSpec(**given)


def cmd_run(args: argparse.Namespace) -> int:
    from fi_dist.console import make_view
    from fi_dist.registry import get_launcher

    spec = spec_from_args(args)
    launcher = get_launcher(spec.launcher)
    dry = launcher.dryrun(spec)
    if args.dry_run:
        sys.stdout.write(dry.to_yaml())
        return 0
    with api_errors():  # a cluster's refusal is one line, not a traceback
        return launcher.run(dry, make_view(force_plain=args.plain))


def cmd_preempt(args: argparse.Namespace) -> int:
    run = rundir.current_run()
    nnodes = run.read_run().get("spec", {}).get("nnodes", 1)
    if not 0 <= args.node < nnodes:
        raise ConfigError(f"--node {args.node} is outside 0..{nnodes - 1} for run {run.run_id}")
    pids = procs.job_processes(run.run_id, args.node)
    run.record_preemption(args.node, args.grace)
    print(f"fi-dist: preempting node {args.node} of {run.run_id}: SIGTERM to {len(pids)} "
          f"processes, SIGKILL after {args.grace:g}s")
    killed = procs.terminate(run.run_id, args.node, grace=args.grace)
    if killed:
        print(f"fi-dist: {killed} processes ignored SIGTERM and were killed")
    return 0


def _add_resume(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("resume", help="ship edited source to every rank of an "
                       "@interactive_pytorch job and restart them from the last checkpoint")
    p.add_argument("--session", default=None, help="the session file (default: "
                   ".vscode/fi-dist-session.json here or in a parent directory)")
    p.set_defaults(func=cmd_resume)


def cmd_resume(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fi_dist.runtime import resume

    path = Path(args.session) if args.session else None
    if path is None:
        here = Path.cwd()
        path = next((d / resume.SESSION_FILE for d in (here, *here.parents)
                     if (d / resume.SESSION_FILE).is_file()), here / resume.SESSION_FILE)
    try:
        answer = resume.request_resume(resume.read_session(path))
    except resume.ResumeError as exc:
        raise ConfigError(str(exc)) from None
    files = ", ".join(answer.get("files") or []) or "no changed files"
    print(f"fi-dist: resume generation {answer.get('generation')}: shipped {files}; every "
          "rank restarts from the last checkpoint")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except FiDistError as exc:
        print(f"fi-dist: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
