"""``@interactive_pytorch``: FlyteInteractive's ``@vscode`` for distributed PyTorch tasks.

::

    @task(task_config=Elastic(nnodes=1, nproc_per_node=2, max_restarts=3))
    @interactive_pytorch(enable=True)
    def train(steps: int) -> str: ...

Works on a plain training function (run by ``fi-dist run`` or torchrun) and under
flytekit's ``@task`` with ``PyTorch``, ``Elastic`` and ``RayJobConfig`` configs, in either
order (placed above ``@task`` it wraps the task's function and makes room for resumes:
Elastic's ``max_restarts``, PyTorch's restart policy). Exactly one code-server and one
debug hub per job, on rank 0 of node 0; every other rank registers with the hub. Off
unless ``enable=True`` or ``FI_DIST_INTERACTIVE=1`` (``FI_DIST_INTERACTIVE=0`` forces it
off, so an execution's env turns a registered task on or off without re-registering);
when off the wrapper costs one attribute lookup and calls the function. Under flytekit
the wrapper is a flytekit ``ClassDecorator``, so the Flyte console links to rank 0's
code-server (``get_extra_config``, as ``@vscode`` does). When on, the task's culler ends
a session nobody uses (``max_idle_seconds``, ``idle=``; docs/idle.md).

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fi_dist import env_vars as ev
from fi_dist.errors import ConfigError
from fi_dist.spec import IdleSpec

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
    """The idle window (``@vscode``'s 10 h): the task's culler ends the task when no rank
    used a device, stepped, or saw debugger or code-server activity for this long (a
    failed rank waiting for a resume included)."""
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
    """Placed above an Elastic ``@task``: raise its ``max_restarts`` to at least this
    (above a PyTorch task: the pods' restart policy becomes OnFailure, with this backoff)."""
    idle: Mapping[str, Any] | None = None
    """More of the culler's options (:class:`~fi_dist.spec.IdleSpec` fields: ``interval``,
    ``threshold``, ``warn_lead``, ``sampler``, ``webhook``, ``email``, ``dry_run``, ...);
    the window is ``max_idle_seconds``. ``FI_DIST_IDLE_*`` in the environment win."""
    bind_address: str = "127.0.0.1"
    """Where rank 0's code-server listens: loopback (reach it by port-forward) or
    ``0.0.0.0`` for the Flyte console's link, whose proxy reaches the pod's IP; then its
    password is the job token."""
    extensions: Sequence[str] = ()
    """More VSCode extensions for rank 0's code-server, as local ``.vsix`` files (installed
    offline with the fi-dist extension, which is always there)."""
    idle_spec: IdleSpec = field(init=False, repr=False)
    """The culler's settings, validated from ``max_idle_seconds`` and ``idle``."""

    def __post_init__(self) -> None:
        for name in ("port", "debug_port"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < 65536:
                raise ValueError(f"interactive_pytorch({name}={value!r}): must be a port in 0..65535")
        if (not isinstance(self.max_idle_seconds, int | float)
                or isinstance(self.max_idle_seconds, bool) or self.max_idle_seconds <= 0):
            raise ValueError(f"interactive_pytorch(max_idle_seconds={self.max_idle_seconds!r}): "
                             "must be a number of seconds > 0")
        if not isinstance(self.idle, Mapping | None):
            raise ValueError(f"interactive_pytorch(idle={self.idle!r}): must be a mapping of "
                             "idle options (interval, threshold, warn_lead, ...)")
        idle = dict(self.idle or {})
        for key in ("enabled", "timeout"):
            if key in idle:
                raise ValueError(f"interactive_pytorch(idle={{{key!r}: ...}}): the window is "
                                 "max_idle_seconds=; the culler is on with the session")
        try:
            self.idle_spec = IdleSpec(enabled=True, timeout=float(self.max_idle_seconds), **idle)
        except (ConfigError, TypeError) as exc:
            raise ValueError(f"interactive_pytorch(idle={self.idle!r}): {exc}") from None
        if not isinstance(self.bind_address, str) or not self.bind_address:
            raise ValueError(f"interactive_pytorch(bind_address={self.bind_address!r}): must "
                             "be an address")
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
    from fi_dist.runtime.idle.task import IdleCulledError
    from fi_dist.runtime.interactive import Session, fresh_store_namespace, restart_count

    root = Path(cfg.source_root).resolve() if cfg.source_root else source_root_of(file)
    if cfg.pre_execute is not None:
        cfg.pre_execute()
    session = Session(cfg, root, local_token=local_token)
    try:
        session.open()
        fresh_store_namespace()
        target = reload_function(fn, file) if restart_count() > 0 else fn
        try:
            if cfg.break_on_start and session.debugged:
                import debugpy

                if debugpy.is_client_connected():
                    debugpy.breakpoint()
            result = target(*args, **kwargs)
        except IdleCulledError:
            raise  # the culler ended the task: no post-mortem for that
        except Exception as exc:
            session.post_mortem(exc)  # returns only when no resume came in time
            raise
    except BaseException as exc:
        session.close(failed=exc)
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


class InteractiveFunction:
    """What ``@interactive_pytorch`` returns for a function: reads the switch once per
    process, then either calls the function or runs it inside the rank's session.

    ``__wrapped__`` is the :class:`_Target` (signature, globals and annotations of the
    function, so flytekit reads the task's interface through it).
    """

    __fi_dist_interactive__ = True

    def __init__(self, target: _Target) -> None:
        functools.update_wrapper(self, target.fn)
        self.__wrapped__ = target

    @property
    def task_function(self) -> Callable[..., Any]:
        """The user's function (flytekit's ``ClassDecorator`` name: its tracker finds the
        task's file through it when the task is defined in ``__main__``)."""
        return self.__wrapped__.fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        target = self.__wrapped__
        if target.on is None:
            target.on = target.cfg.enabled()
        if not target.on:
            return target.fn(*args, **kwargs)
        return _run(target.cfg, target.fn, target.file, args, kwargs, target.handed_token)

    def get_extra_config(self) -> dict[str, str]:
        """The Flyte console's link to rank 0's code-server (``@vscode``'s link type and
        keys); none for a port picked at run time (0), which no link can name."""
        port = self.__wrapped__.cfg.port
        return {"link_type": "vscode", "port": str(port)} if port else {}

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        return self(*args, **kwargs)


_flyte_class: type | None = None


def _flyte_function_class() -> type:
    """:class:`InteractiveFunction` as a flytekit ``ClassDecorator`` (whose
    ``get_extra_config`` flytekit's serializer merges into the task template: the console
    link). Made on first use, where flytekit is already imported."""
    global _flyte_class
    if _flyte_class is None:
        from flytekit.core.utils import ClassDecorator

        _flyte_class = type("InteractiveTaskFunction", (InteractiveFunction, ClassDecorator),
                            {"__module__": __name__,
                             "__doc__": "InteractiveFunction as a flytekit ClassDecorator."})
    return _flyte_class


def __getattr__(name: str) -> Any:
    # Where pickle finds the class made above, in a process (a spawned Elastic worker)
    # that has not made it yet.
    if name == "InteractiveTaskFunction":
        return _flyte_function_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _wrap(fn: Callable[..., Any], cfg: InteractiveConfig) -> Callable[..., Any]:
    target = _Target(fn, cfg, source_file_of(fn))
    # In a task file flytekit is imported already (``from flytekit import task``); a
    # plain training function never pays for importing it.
    cls = _flyte_function_class() if "flytekit" in sys.modules else InteractiveFunction
    wrapper: Callable[..., Any] = cls(target)
    return wrapper


def _make_room_for_resumes(config: Any, cfg: InteractiveConfig) -> None:
    """Every resume restarts the ranks once: an Elastic task's worker group
    (``max_restarts``), a PyTorch task's pods (restart policy OnFailure: the kubelet
    restarts each pod's container in place, ``backoff_limit`` times)."""
    if hasattr(config, "max_restarts") and hasattr(config, "nproc_per_node"):  # Elastic
        config.max_restarts = max(config.max_restarts, cfg.max_restarts)
    elif hasattr(config, "master") and hasattr(config, "worker"):  # PyTorch
        from flytekitplugins.kfpytorch.task import RestartPolicy, RunPolicy

        for replicas in (config.master, config.worker):
            if replicas.restart_policy is None:
                replicas.restart_policy = RestartPolicy.FAILURE
        if config.run_policy is None:
            config.run_policy = RunPolicy(backoff_limit=cfg.max_restarts)
        elif config.run_policy.backoff_limit is None:
            config.run_policy.backoff_limit = cfg.max_restarts


def _wrap_task(task: Any, cfg: InteractiveConfig) -> Any:
    task._task_function = _wrap(task.task_function, cfg)
    if cfg.enabled():
        _make_room_for_resumes(getattr(task, "task_config", None), cfg)
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
