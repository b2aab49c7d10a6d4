"""``@interactive_pytorch``: FlyteInteractive's ``@vscode`` for distributed PyTorch tasks.

::

    @task(task_config=Elastic(nnodes=1, nproc_per_node=2, max_restarts=3))
    @interactive_pytorch(enable=True)
    def train(steps: int) -> str: ...

Works on a plain training function (run by ``fi-dist run`` or torchrun) and under
flytekit's ``@task`` with ``PyTorch``, ``Elastic`` and ``RayJobConfig`` configs, in either
order (placed above ``@task`` it wraps the task's function and, for Elastic, makes sure
``max_restarts`` leaves room for resumes). Exactly one code-server and one debug hub per
job, on rank 0 of node 0; every other rank registers with the hub. Off unless
``enable=True`` or ``FI_DIST_INTERACTIVE=1`` (``FI_DIST_INTERACTIVE=0`` forces it off);
when off the wrapper costs one dictionary lookup and calls the function.

See docs/flyte.md.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import logging
import os
import secrets
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fi_dist import env_vars as ev

log = logging.getLogger("fi_dist.interactive")

MARK = "__fi_dist_interactive__"


@dataclass
class InteractiveConfig:
    """Options of ``@interactive_pytorch`` (``@vscode``'s where they make sense, plus ranks)."""

    enable: bool | None = None
    """True/False; None follows ``FI_DIST_INTERACTIVE`` (off when unset). The env var set to
    0 or 1 overrides the argument, so a production launch can switch every task off."""
    port: int = 8080
    """code-server's port on rank 0's 127.0.0.1 (``@vscode``'s default); 0 = a free one."""
    debug_port: int = 5678
    """The debug hub's IDE port on rank 0's 127.0.0.1; 0 = a free one (see launch.json)."""
    max_idle_seconds: float = 36000.0
    """A failed rank waits this long after the last activity (code-server heartbeat, an
    attached debugger) for a resume, then the task fails."""
    run_task_first: bool = False
    """True: run first, and bring up code-server only when a rank fails (post-mortem)."""
    pre_execute: Callable[[], None] | None = None
    """Called on every rank before the session opens."""
    post_execute: Callable[[], None] | None = None
    """Called on every rank after the function returned (not after a failure)."""
    wait_for_client: bool = False
    """Hold every debugged rank before the function until a debugger client attaches."""
    break_on_start: bool = False
    """Stop every debugged rank on the function's first line (once a client is attached)."""
    ranks: Sequence[int] | None = None
    """Ranks that run debugpy (None: all). Every rank still takes part in resume."""
    source_root: str | None = None
    """The directory shipped on resume; default: the task file's top package directory."""
    code_server: str | None = None
    """code-server binary; default ``FI_DIST_CODE_SERVER``, ``.tools/code-server``, PATH."""
    max_restarts: int = 3
    """Placed above an Elastic ``@task``: raise its ``max_restarts`` to at least this."""
    extensions: Sequence[str] = ()
    """More VSCode extensions for rank 0's code-server, as local ``.vsix`` files (installed
    offline with the fi-dist extension, which is always there)."""

    def __post_init__(self) -> None:
        for name in ("port", "debug_port"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < 65536:
                raise ValueError(f"interactive_pytorch({name}={value!r}): must be a port in 0..65535")
        if self.max_idle_seconds <= 0:
            raise ValueError(f"interactive_pytorch(max_idle_seconds={self.max_idle_seconds!r}): "
                             "must be > 0")
        if self.ranks is not None:
            ranks = list(self.ranks)
            if any(not isinstance(r, int) or r < 0 for r in ranks):
                raise ValueError(f"interactive_pytorch(ranks={self.ranks!r}): must be ranks >= 0")
            self.ranks = tuple(ranks)
        for name in ("pre_execute", "post_execute"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise ValueError(f"interactive_pytorch({name}=...): must be callable")
        if self.max_restarts < 0:
            raise ValueError(f"interactive_pytorch(max_restarts={self.max_restarts}): must be >= 0")
        if isinstance(self.extensions, str):
            raise ValueError(f"interactive_pytorch(extensions={self.extensions!r}): must be a "
                             "list of .vsix paths")
        paths = [str(Path(e).resolve()) for e in self.extensions]
        for given, path in zip(self.extensions, paths, strict=True):
            if not path.endswith(".vsix") or not Path(path).is_file():
                raise ValueError(f"interactive_pytorch(extensions=[..., {given!r}]): not a "
                                 ".vsix file (give the path of a VSCode extension package)")
        self.extensions = tuple(paths)

    def enabled(self) -> bool:
        switch = os.environ.get(ev.FI_DIST_INTERACTIVE)
        if switch in ("0", "1"):
            return switch == "1"
        return bool(self.enable)


def source_file_of(fn: Callable[..., Any]) -> str | None:
    """``fn``'s file, read where the decorator runs (the parent process): a worker gets
    the function cloudpickled by value, whose code no longer names its file."""
    try:
        file = inspect.getsourcefile(fn)
    except TypeError:
        return None
    return str(Path(file).resolve()) if file else None


def source_root_of(file: str | None) -> Path:
    """The directory of ``file``, walked up past package ``__init__.py`` files (else cwd)."""
    if not file:
        return Path.cwd()
    path = Path(file).parent
    while (path / "__init__.py").exists() and path.parent != path:
        path = path.parent
    return path


def reload_function(fn: Callable[..., Any], file: str | None) -> Callable[..., Any]:
    """``fn`` as ``file`` defines it NOW (after a resume shipped an edit), else ``fn``.

    The module is executed under a private name (never ``__main__``), the attribute of
    the same name is unwrapped from a flytekit task and from this decorator.
    """
    if not file or not Path(file).is_file():
        return fn
    spec = importlib.util.spec_from_file_location(f"_fi_dist_reloaded_{fn.__name__}", file)
    if spec is None or spec.loader is None:
        return fn
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # flytekit's @task looks its function's module up here
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the edit does not even import: the rank fails with it
        raise RuntimeError(f"reloading {file} after a resume failed: {exc}") from exc
    obj = getattr(module, fn.__name__, None)
    obj = _unwrap(getattr(obj, "task_function", obj))
    return obj if callable(obj) else fn


def _run(cfg: InteractiveConfig, fn: Callable[..., Any], file: str | None, args: Any,
         kwargs: Any, local_token: str | None = None) -> Any:
    from fi_dist.runtime.interactive import Session, fresh_store_namespace, restart_count

    root = Path(cfg.source_root).resolve() if cfg.source_root else source_root_of(file)
    if cfg.pre_execute is not None:
        cfg.pre_execute()
    session = Session(cfg, root, local_token=local_token)
    session.open()
    fresh_store_namespace()
    target = reload_function(fn, file) if restart_count() > 0 else fn
    try:
        if cfg.break_on_start and session.debugged:
            import debugpy

            if debugpy.is_client_connected():
                debugpy.breakpoint()
        result = target(*args, **kwargs)
    except Exception as exc:
        session.post_mortem(exc)  # returns only when no resume came in time
        session.close()
        raise
    session.close()
    if cfg.post_execute is not None:
        cfg.post_execute()
    return result


class _Target:
    """The decorated function, its options and its file.

    flytekit's Elastic task cloudpickles the wrapper into ``spawn`` workers, and
    ``pyflyte run`` has the task's directory on ``sys.path`` only while importing the
    file, so a worker could not import the module-level helpers the function refers to.
    :meth:`__reduce__` puts the source root back on the worker's path before the function
    itself is unpickled. It is also the wrapper's ``__wrapped__`` (with the function's
    signature and globals), so flytekit reads the task's interface through it.

    It also carries a job token made where it was decorated, with that process's pid: a
    worker that got it from its parent (unpickled from a ``spawn``, or inherited by a
    ``fork``) shares it with every other worker of that parent, so a one-node Elastic task
    needs no token in its environment (:func:`fi_dist.runtime.interactive.job_token`).
    It travels only in the pickle the parent hands its own workers, never over a network.
    """

    def __init__(self, fn: Callable[..., Any], cfg: InteractiveConfig, file: str | None,
                 parent: tuple[int, str] | None = None) -> None:
        self.fn, self.cfg, self.file = fn, cfg, file
        self.parent = parent or (os.getpid(), secrets.token_hex(16))
        self.on: bool | None = None  # the switch, read on the first call in each process
        self.__wrapped__ = fn  # inspect.unwrap (getsource, type hints) reaches the function
        self.__signature__ = inspect.signature(fn)
        self.__globals__ = getattr(fn, "__globals__", {})
        self.__annotations__ = getattr(fn, "__annotations__", {})

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    @property
    def handed_token(self) -> str | None:
        """The parent's token when this process is a worker it started, else None."""
        pid, token = self.parent
        return token if pid != os.getpid() else None

    def __reduce__(self) -> tuple[Any, ...]:
        cloudpickle = _pickler()
        root = str(source_root_of(self.file)) if self.file else None
        # Only what an enabled session without a token from the environment needs: a
        # pickle that goes elsewhere (a blob store) carries no token when it is not used.
        parent = (self.parent if self.cfg.enabled() and not os.environ.get(ev.FI_DIST_DEBUG_TOKEN)
                  else None)
        return (_restore, (root, cloudpickle.dumps((self.fn, self.cfg, self.file, parent))))


def _pickler() -> Any:
    try:  # flytekit's own choice; plain pickle where flytekit is not installed
        import cloudpickle
    except ImportError:
        import pickle as cloudpickle
    return cloudpickle


def _restore(root: str | None, payload: bytes) -> _Target:
    if root and root not in sys.path:
        sys.path.append(root)
    fn, cfg, file, parent = _pickler().loads(payload)
    return _Target(fn, cfg, file, parent)


def _unwrap(obj: Any) -> Any:
    """The user's function under this decorator (a no-op for anything else)."""
    while getattr(obj, MARK, False):
        obj = obj.__wrapped__.fn
    return obj


def _wrap(fn: Callable[..., Any], cfg: InteractiveConfig) -> Callable[..., Any]:
    target = _Target(fn, cfg, source_file_of(fn))

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if target.on is None:
            target.on = target.cfg.enabled()
        if not target.on:
            return target.fn(*args, **kwargs)
        return _run(target.cfg, target.fn, target.file, args, kwargs, target.handed_token)

    wrapper.__wrapped__ = target
    setattr(wrapper, MARK, True)
    return wrapper


def _wrap_task(task: Any, cfg: InteractiveConfig) -> Any:
    task._task_function = _wrap(task.task_function, cfg)
    config: Any = getattr(task, "task_config", None)
    if (cfg.enabled() and hasattr(config, "max_restarts") and hasattr(config, "nproc_per_node")
            and config.max_restarts < cfg.max_restarts):
        config.max_restarts = cfg.max_restarts  # room for resumes (Elastic only)
    return task


def interactive_pytorch(fn: Callable[..., Any] | None = None, **options: Any) -> Any:
    """Make a distributed training function (or flytekit task) debuggable where it runs.

    Usable bare (``@interactive_pytorch``) or with :class:`InteractiveConfig` options
    (``@interactive_pytorch(enable=True, port=8080)``), below or above ``@task``.

    Raises:
        ValueError: an option is out of range (the message names it).
        TypeError: an unknown option.
    """
    cfg = InteractiveConfig(**options)

    def decorate(obj: Any) -> Any:
        if hasattr(obj, "task_function") and hasattr(obj, "_task_function"):
            return _wrap_task(obj, cfg)
        if not callable(obj):
            raise TypeError(f"@interactive_pytorch decorates a function or a flytekit task, "
                            f"not {type(obj).__name__}")
        return _wrap(obj, cfg)

    return decorate(fn) if fn is not None else decorate
