"""What ``fi-dist run`` shows: prefixed lines, plus a live table of ranks on a terminal."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, TextIO

_PREFIX = re.compile(r"^\[node(\d+) rank(\d+)\] ?(.*)$")


class PlainView:
    """Prefixed lines only: for CI, logs, pipes."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout

    def start(self, nnodes: int, nproc_per_node: int) -> None:
        pass

    def node_state(self, node: int, state: str) -> None:
        pass

    def line(self, node: int, text: str) -> None:
        if not _PREFIX.match(text):
            text = f"[node{node}] {text}"
        self.out.write(text + "\n")
        self.out.flush()

    def message(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def stop(self) -> None:
        pass


class LiveView(PlainView):
    """A rich table of nodes and ranks (state, latest line) above the scrolling output."""

    def __init__(self) -> None:
        from rich.console import Console

        super().__init__()
        self.console = Console()
        self._nodes: dict[int, str] = {}
        self._latest: dict[int, str] = {}
        self._nproc = 1
        self._live: Any = None

    def _table(self):
        from rich.table import Table

        table = Table(title="fi-dist", expand=False)
        for col in ("node", "rank", "state", "latest"):
            table.add_column(col)
        for node, state in sorted(self._nodes.items()):
            for local in range(self._nproc):
                rank = node * self._nproc + local
                table.add_row(str(node), str(rank), state, self._latest.get(rank, "")[-80:])
        return table

    def start(self, nnodes: int, nproc_per_node: int) -> None:
        from rich.live import Live

        self._nproc = nproc_per_node
        self._nodes = {n: "starting" for n in range(nnodes)}
        self._live = Live(self._table(), console=self.console, refresh_per_second=4)
        self._live.start()

    def node_state(self, node: int, state: str) -> None:
        self._nodes[node] = state
        if self._live:
            self._live.update(self._table())

    def line(self, node: int, text: str) -> None:
        m = _PREFIX.match(text)
        if m:
            self._latest[int(m.group(2))] = m.group(3)
        else:
            text = f"[node{node}] {text}"
        self.console.print(text, markup=False, highlight=False)
        if self._live:
            self._live.update(self._table())

    def message(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)

    def stop(self) -> None:
        if self._live:
            self._live.stop()
            self._live = None


class TeeView(PlainView):
    """Shows through ``view`` and appends every line and message to ``path`` as well."""

    def __init__(self, view: PlainView, path: Path) -> None:
        super().__init__(view.out)
        self.view = view
        self._log = path.open("a")

    def __enter__(self) -> TeeView:
        return self

    def __exit__(self, *exc: object) -> None:
        self._log.close()

    def _write(self, text: str) -> None:
        if not self._log.closed:
            self._log.write(text + "\n")
            self._log.flush()

    def start(self, nnodes: int, nproc_per_node: int) -> None:
        self.view.start(nnodes, nproc_per_node)

    def node_state(self, node: int, state: str) -> None:
        self.view.node_state(node, state)

    def line(self, node: int, text: str) -> None:
        self.view.line(node, text)
        self._write(text)

    def message(self, text: str) -> None:
        self.view.message(text)
        self._write(text)

    def stop(self) -> None:
        self.view.stop()


def make_view(force_plain: bool = False) -> PlainView:
    if not force_plain and sys.stdout.isatty():
        return LiveView()
    return PlainView()
