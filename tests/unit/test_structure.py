"""The package's shape: no import cycles, and the runtime / client / shared-core layering.

Read from the source with ``ast`` (every import, also those inside functions; only
``if TYPE_CHECKING:`` blocks are left out, they never run). ``launchers/`` ships as
``fi_dist.launchers``.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SHARED_CORE = {"fi_dist.spec", "fi_dist.config", "fi_dist.errors", "fi_dist.env_vars",
               "fi_dist.rundir", "fi_dist.contract", "fi_dist.launchjson", "fi_dist.procs",
               # the hang doctor's formats, collection and diagnosis: ranks, node agents and
               # the client all use them (docs/hangs.md)
               "fi_dist.hang", "fi_dist.hang.ledger", "fi_dist.hang.stacks",
               "fi_dist.hang.diagnose", "fi_dist.hang.report", "fi_dist.hang.collect",
               "fi_dist.hang.watch"}
CLIENT = ("fi_dist.cli", "fi_dist.job_commands", "fi_dist.launcher", "fi_dist.registry",
          "fi_dist.dap_client", "fi_dist.rank_eval",
          "fi_dist.console", "fi_dist.summary", "fi_dist.supervisor", "fi_dist.launchers",
          "fi_dist.k8s")


def modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for root, prefix in ((REPO / "fi_dist", "fi_dist"), (REPO / "launchers", "fi_dist.launchers")):
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([prefix, *parts])] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The fi_dist modules ``name`` imports (a package import counts as its __init__)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parent = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*parent, base] if base else parent)
                found.add(base)
                found.update(f"{base}.{a.name}" for a in child.names)
            visit(child)

    visit(ast.parse(path.read_text()))
    # ``fi_dist`` itself is the lazy facade every ``fi_dist.x`` import passes through.
    return {m for m in found if m in known and m not in (name, "fi_dist")}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def find_cycles(g: dict[str, set[str]]) -> list[list[str]]:
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(g[node]):
            # A package importing its own submodule is how packages export; not a cycle.
            if nxt.startswith(node + "."):
                continue
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                dfs(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            dfs(node)
    return cycles


def test_no_import_cycles() -> None:
    cycles = find_cycles(graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_runtime_never_imports_the_client_side() -> None:
    bad = {(m, i) for m, deps in graph().items() if m.startswith("fi_dist.runtime")
           for i in deps if i.startswith(CLIENT)}
    assert not bad, sorted(bad)


def test_launchers_and_manifests_never_import_the_runtime() -> None:
    bad = {(m, i) for m, deps in graph().items()
           if m.startswith(("fi_dist.launchers", "fi_dist.k8s"))
           for i in deps if i.startswith("fi_dist.runtime")}
    assert not bad, sorted(bad)


def test_shared_core_imports_only_shared_core() -> None:
    g = graph()
    bad = {(m, i) for m in SHARED_CORE for i in g[m] if i not in SHARED_CORE}
    assert not bad, sorted(bad)


def test_the_checker_sees_a_cycle() -> None:
    """The finder itself: a cycle is reported, a package importing its submodule is not."""
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"p": {"p.x"}, "p.x": {"q"}, "q": set()}) == []


PROCESS_MODULES = {"subprocess", "multiprocessing", "torch.multiprocessing", "pty"}


def test_unit_tests_start_no_process() -> None:
    """tests/unit means no process start: those tests live in tests/integration or dist."""
    offenders = []
    for path in sorted((REPO / "tests" / "unit").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Attribute) and node.attr in ("fork", "spawn", "system",
                                                                   "posix_spawn"):
                names = [f"os.{node.attr}"] if getattr(node.value, "id", "") == "os" else []
            offenders += [f"{path.name}: {n}" for n in names
                          if n in PROCESS_MODULES or n.startswith("os.")]
    assert not offenders, offenders
