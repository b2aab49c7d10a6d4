"""Entry point of every rank: ``python -m fi_dist.runtime.rank_main [--module|--no-python] SCRIPT [ARGS...]``.

Runs the user's script unmodified (as ``python SCRIPT`` would: ``__main__``, argv,
``sys.path[0]``; with ``--module`` as ``python -m MODULE``; with ``--no-python`` a
program, see :func:`run_program`) after the per-rank setup fi-dist needs: rank state in the run
directory, torchelastic's error file on an uncaught exception (so the node agent and
the launcher can name the first failure), and death with the node agent (no orphans).
Feature hooks (debugger, checkpoint preemption handling) attach here.
"""

from __future__ import annotations

import ctypes
import logging
import os
import runpy
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

from fi_dist import contract
from fi_dist import env_vars as ev
from fi_dist.contract import MODULE_FLAG, NO_PYTHON_FLAG, LauncherKind
from fi_dist.rundir import RunDir
from fi_dist.runtime import hang, heartbeat
from fi_dist.runtime.environment import RankEnvironment

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # torchelastic starts ranks in their own session; if the node agent is SIGKILLed
    # they would outlive it. PDEATHSIG makes the kernel end them with it.
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def _record_error(exc: BaseException) -> None:
    # Same file format as torch.distributed.elastic's @record, so ProcessFailure reads it.
    if not os.environ.get(ev.TORCHELASTIC_ERROR_FILE):
        return
    from torch.distributed.elastic.multiprocessing.errors import get_error_handler

    get_error_handler().record_exception(exc)


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    return 1


def run_script(script: str, args: list[str]) -> None:
    """Run ``script`` as ``__main__`` with ``args``, like the ``python`` command does."""
    path = Path(script)
    if not path.is_file():
        raise FileNotFoundError(f"training script not found: {script}")
    sys.argv = [script, *args]
    sys.path[0] = str(path.resolve().parent)
    runpy.run_path(str(path), run_name="__main__")


def run_module(module: str, args: list[str]) -> None:
    """Run ``module`` as ``__main__`` with ``args``, like ``python -m`` does."""
    sys.argv = [module, *args]  # runpy puts the module's file in argv[0]
    sys.path[0] = os.getcwd()
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def find_program(program: str) -> str:
    """``program`` as a path: itself when it names a file, else its match on PATH.

    Raises:
        FileNotFoundError: neither (the message names it).
    """
    if os.sep in program:
        if os.path.isfile(program) and os.access(program, os.X_OK):
            return program
    elif found := shutil.which(program):
        return found
    raise FileNotFoundError(f"program not found: {program} (not an executable file, "
                            "nor on PATH)")


def is_python_script(path: str) -> bool:
    """True for a file whose ``#!`` line names a python (console scripts: pyflyte-execute)."""
    try:
        with open(path, "rb") as f:
            first = f.readline(256)
    except OSError:
        return False
    return first.startswith(b"#!") and b"python" in first


def run_program(program: str, args: list[str], debugged: bool) -> None:
    """``--no-python``: run ``program`` with ``args``.

    A Python script (a console script such as ``pyflyte-execute``) runs in this
    interpreter, so the debugger, post-mortem and the error file work as for a script;
    any other program replaces this process (``exec``: same pid, same environment), where
    no Python hook can follow it.
    """
    path = find_program(program)
    if is_python_script(path):
        run_script(path, args)
        return
    if debugged:
        logging.getLogger("fi_dist.rank").warning(
            "fi-dist: %s is not a Python program: it runs without the debugger", program)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(path, [program, *args])


def parse_target(argv: list[str]) -> tuple[str, str, list[str]]:
    """(kind, target, args) from ``[--module|--no-python] TARGET ARGS...``."""
    kind = "script"
    if argv and argv[0] in (MODULE_FLAG, NO_PYTHON_FLAG):
        kind = "module" if argv[0] == MODULE_FLAG else "program"
        argv = argv[1:]
    if not argv:
        raise ValueError("no target")
    return kind, argv[0], argv[1:]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        kind, target, target_args = parse_target(argv)
    except ValueError:
        print("usage: python -m fi_dist.runtime.rank_main [--module|--no-python] SCRIPT "
              "[ARGS...]", file=sys.stderr)
        return 2
    env = RankEnvironment.from_env()
    job = contract.current()
    if env.launcher is LauncherKind.LOCAL:
        _die_with_parent()
        if job.network == "loopback":
            # Every "node" is on loopback: gloo must use lo, not the external NIC. (In
            # netns mode each node has its own eth0 and gloo finds it as in a pod.)
            os.environ.setdefault(ev.GLOO_SOCKET_IFNAME, "lo")
    state = RunDir(Path(job.run_dir)) if job.run_dir else None
    if state:
        state.write_rank(env.rank, node=env.node_rank, local_rank=env.local_rank,
                         pid=os.getpid(), addr=env.node_addr, state="running",
                         started=time.time())
    doctor = hang.setup(env, job)  # collective ledger + stack dumper (docs/hangs.md)
    code = 0
    debug = job.debug
    if debug is not None:  # debugpy on loopback + the hub agent; debugpy is imported only here
        from fi_dist.runtime.debug import rank_hook

        rank_hook.setup(env, debug)
    try:
        if kind == "module":
            run_module(target, target_args)
        elif kind == "program":
            run_program(target, target_args, debug is not None)
        else:
            run_script(target, target_args)
    except SystemExit as exc:
        code = _exit_code(exc)
    except BaseException as exc:
        debugged = debug is not None and not isinstance(exc, KeyboardInterrupt)
        if debug is not None and debugged:
            rank_hook.post_mortem(exc, debug)
        _record_error(exc)
        # Final: a debugger state arriving later never overwrites it (the root cause).
        heartbeat.current().finish("failed", exitcode=1, error=f"{type(exc).__name__}: {exc}",
                                   ended=time.time())
        if doctor:
            doctor.ended(1, failed=True)
        if debugged:
            # Re-raised through pydevd's traced frames the exception would stop a second
            # time as "uncaught" after the post-mortem's continue: end as Python would.
            traceback.print_exception(exc)
            rank_hook.exiting(1)
            return 1
        raise
    if doctor:
        doctor.ended(code, failed=False)
    heartbeat.current().finish("exited", exitcode=code, ended=time.time())
    if debug is not None:
        rank_hook.exiting(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
