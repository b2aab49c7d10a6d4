"""Every environment variable in the launcher -> runtime contract, named once.

A launcher (local, PyTorchJob, Ray) sets these; the in-job runtime reads them. The
operator's and torchrun's own variables are listed too, so no module spells a
variable name as a string literal of its own.
"""

from __future__ import annotations

# --- fi-dist's own -----------------------------------------------------------------
FI_DIST_LAUNCHER = "FI_DIST_LAUNCHER"
"""Which launcher started this process: local, pytorchjob, ray."""
FI_DIST_RUN_ID = "FI_DIST_RUN_ID"
"""Unique id of one `fi-dist run`; every process of the job carries it (orphan sweep)."""
FI_DIST_RUN_DIR = "FI_DIST_RUN_DIR"
"""Directory where ranks and node agents write status, results and logs."""
FI_DIST_NODE_ADDR = "FI_DIST_NODE_ADDR"
"""This node's own address ("pod IP"): 127.0.0.(i+2) locally, status.podIP in a pod."""
FI_DIST_NODE_RANK = "FI_DIST_NODE_RANK"
"""This node's index; set for the whole process tree of a node (the "pod")."""
FI_DIST_ATTEMPT = "FI_DIST_ATTEMPT"
"""Restart attempt of the whole job, 0 for the first run."""
FI_DIST_DEBUG = "FI_DIST_DEBUG"
"""1 when the job runs under the debug hub."""
FI_DIST_DEBUG_PORT = "FI_DIST_DEBUG_PORT"
"""The hub's IDE-facing port on rank 0's node."""
FI_DIST_DEBUG_HOST = "FI_DIST_DEBUG_HOST"
"""Address the hub's IDE-facing port binds to (127.0.0.1 unless asked otherwise)."""
FI_DIST_DEBUG_TOKEN = "FI_DIST_DEBUG_TOKEN"
"""Shared secret every hub connection must present."""
FI_DIST_DEBUG_RANK_PORT = "FI_DIST_DEBUG_RANK_PORT"
"""The hub's rank-facing port on node 0 (ranks dial out to MASTER_ADDR:this; default port+1)."""
FI_DIST_DEBUG_PG_TIMEOUT = "FI_DIST_DEBUG_PG_TIMEOUT"
"""Seconds of process-group timeout forced in debug mode (default 7 days)."""
FI_DIST_DEBUG_TRACE = "FI_DIST_DEBUG_TRACE"
"""lazy (default): pydevd traces only once a breakpoint/pause needs it; eager: from the start."""
FI_DIST_WAIT_FOR_CLIENT = "FI_DIST_WAIT_FOR_CLIENT"
"""1: hold every rank before the script's first line until a client attaches."""
FI_DIST_POST_MORTEM_WAIT = "FI_DIST_POST_MORTEM_WAIT"
"""Seconds a failed rank waits for a debugger client before failing the job."""
FI_DIST_MAX_RESTARTS = "FI_DIST_MAX_RESTARTS"
"""Whole-job restarts the launcher allows (``--max-restarts``): room for resumes."""
FI_DIST_IDLE_WATCHER = "FI_DIST_IDLE_WATCHER"
"""Set for a node's ranks when a culler outside them watches the node (node agent, Ray)."""
FI_DIST_GRACE_PERIOD = "FI_DIST_GRACE_PERIOD"
"""Seconds between SIGTERM and SIGKILL (terminationGracePeriodSeconds in a pod)."""
FI_DIST_USER_ENV = "FI_DIST_USER_ENV"
"""Comma-separated names of the variables the job spec's ``env`` added (the contract)."""
FI_DIST_CKPT_DIR = "FI_DIST_CKPT_DIR"
"""Checkpoint directory or URI when the launcher provides one."""
FI_DIST_IDLE_TIMEOUT = "FI_DIST_IDLE_TIMEOUT"
"""Seconds of GPU idleness with no debugger activity before a node is ended."""
FI_DIST_IDLE_THRESHOLD = "FI_DIST_IDLE_THRESHOLD"
"""Utilisation percent under which a GPU counts as idle."""
FI_DIST_IDLE_INTERVAL = "FI_DIST_IDLE_INTERVAL"
"""Seconds between two samples of the idle culler."""
FI_DIST_IDLE_WARN_LEAD = "FI_DIST_IDLE_WARN_LEAD"
"""Seconds before ending an idle node that the warning goes out."""
FI_DIST_IDLE_DRY_RUN = "FI_DIST_IDLE_DRY_RUN"
"""1: the idle culler only reports, it never signals a rank."""
FI_DIST_IDLE_SAMPLER = "FI_DIST_IDLE_SAMPLER"
"""Which utilisation source the culler uses: auto, nvml, cpu."""
FI_DIST_IDLE_HANG_FACTOR = "FI_DIST_IDLE_HANG_FACTOR"
"""A rank is hung when its step heartbeat is this many median step times old."""
FI_DIST_IDLE_WEBHOOK = "FI_DIST_IDLE_WEBHOOK"
"""URL the culler POSTs its JSON notifications to."""
FI_DIST_IDLE_EMAIL = "FI_DIST_IDLE_EMAIL"
"""Comma-separated addresses the culler mails its notifications to."""
FI_DIST_IDLE_SMTP = "FI_DIST_IDLE_SMTP"
"""SMTP server HOST:PORT for the culler's mail."""
FI_DIST_IDLE_EMAIL_FROM = "FI_DIST_IDLE_EMAIL_FROM"
"""Sender address of the culler's mail."""
FI_DIST_HANG_DOCTOR = "FI_DIST_HANG_DOCTOR"
"""0 turns the hang doctor off in every rank (collective ledger, stack dumper; docs/hangs.md)."""
FI_DIST_INTERACTIVE = "FI_DIST_INTERACTIVE"
"""1 turns on every @interactive_pytorch (0 turns them off, even with enable=True)."""
FI_DIST_CODE_SERVER = "FI_DIST_CODE_SERVER"
"""Path of the code-server binary (default: .tools/code-server, then PATH)."""
FI_DIST_CODE_SERVER_EXTENSIONS = "FI_DIST_CODE_SERVER_EXTENSIONS"
"""Extensions directory for rank 0's code-server (the image's preinstalled debugger)."""
FI_DIST_CODE_SERVER_START = "FI_DIST_CODE_SERVER_START"
"""1: node 0 of a --debug job starts code-server beside the hub (fi-dist run --code-server)."""
FI_DIST_CODE_SERVER_PORT = "FI_DIST_CODE_SERVER_PORT"
"""That code-server's port on 127.0.0.1 (0: a free one)."""
FI_DIST_VSIX = "FI_DIST_VSIX"
"""More .vsix files for that code-server, os.pathsep-separated absolute paths."""
FI_DIST_CRDS_DIR = "FI_DIST_CRDS_DIR"
"""Directory of CRD schemas that manifests are validated against (default ../shared/crds)."""
FI_DIST_NETWORK = "FI_DIST_NETWORK"
"""How the local launcher's nodes are networked: loopback (default) or netns."""
FI_DIST_HEARTBEAT = "FI_DIST_HEARTBEAT"
"""HOST:PORT (UDP) where each node agent sends its liveness heartbeat (local launcher)."""
FI_DIST_LIFELINE_FD = "FI_DIST_LIFELINE_FD"
"""A pipe's read end inherited by each node agent; end of file: the launcher is gone."""
FI_DIST_OWNER = "FI_DIST_OWNER"
"""PID:STARTTIME of the `fi-dist run` that owns the job (a dead owner's leftovers are swept)."""

# --- Kubeflow training operator (PyTorchJob pod env) -------------------------------
MASTER_ADDR = "MASTER_ADDR"
MASTER_PORT = "MASTER_PORT"
WORLD_SIZE = "WORLD_SIZE"
RANK = "RANK"
PET_NNODES = "PET_NNODES"
PET_NPROC_PER_NODE = "PET_NPROC_PER_NODE"
PET_NODE_RANK = "PET_NODE_RANK"
PET_MASTER_ADDR = "PET_MASTER_ADDR"
PET_MASTER_PORT = "PET_MASTER_PORT"
PYTHONUNBUFFERED = "PYTHONUNBUFFERED"

# --- torchrun / torch.distributed.elastic worker env -------------------------------
LOCAL_RANK = "LOCAL_RANK"
LOCAL_WORLD_SIZE = "LOCAL_WORLD_SIZE"
GROUP_RANK = "GROUP_RANK"
GROUP_WORLD_SIZE = "GROUP_WORLD_SIZE"
ROLE_RANK = "ROLE_RANK"
TORCHELASTIC_RUN_ID = "TORCHELASTIC_RUN_ID"
TORCHELASTIC_ERROR_FILE = "TORCHELASTIC_ERROR_FILE"
TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE = "TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE"
TORCHELASTIC_RESTART_COUNT = "TORCHELASTIC_RESTART_COUNT"
TORCHELASTIC_MAX_RESTARTS = "TORCHELASTIC_MAX_RESTARTS"
TORCHELASTIC_USE_AGENT_STORE = "TORCHELASTIC_USE_AGENT_STORE"

# --- Flyte (set by flytepropeller in a task's pod) ----------------------------------
FLYTE_INTERNAL_EXECUTION_ID = "FLYTE_INTERNAL_EXECUTION_ID"
"""The execution's name: what resume generations of a pod without torchrun are bound to."""
# --- torch's Flight Recorder (on by default in fi-dist's ranks: docs/hangs.md) -------------
TORCH_FR_BUFFER_SIZE = "TORCH_FR_BUFFER_SIZE"
TORCH_NCCL_TRACE_BUFFER_SIZE = "TORCH_NCCL_TRACE_BUFFER_SIZE"

# --- collectives on loopback -------------------------------------------------------
GLOO_SOCKET_IFNAME = "GLOO_SOCKET_IFNAME"

OPERATOR_POD_VARS: tuple[str, ...] = (
    MASTER_ADDR,
    MASTER_PORT,
    WORLD_SIZE,
    RANK,
    PET_NNODES,
    PET_NPROC_PER_NODE,
    PET_NODE_RANK,
    PET_MASTER_ADDR,
    PET_MASTER_PORT,
    PYTHONUNBUFFERED,
)
"""What the Kubeflow training operator injects into every PyTorchJob pod."""
