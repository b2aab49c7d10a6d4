"""Enter a node's network namespace, then exec a command: what a container runtime does.

``python -I -S netns_enter.py --netns PATH --hosts FILE --hostname NAME -- ARGV``

1. ``setns`` into the network namespace at PATH (``/proc/<launcher>/fd/<fd>``);
2. a mount and a UTS namespace of its own: ``/`` made a slave (nothing mounted here
   reaches the host), the run's hosts file bound over ``/etc/hosts``, ``/sys`` remounted
   so ``/sys/class/net`` shows the node's own interfaces (as ``ip netns exec`` does), and
   the hostname set to the pod's name, so gloo, which resolves the hostname to pick its
   interface, lands on the node's ``eth0`` exactly as in a pod;
3. ``exec`` ARGV (the node agent), keeping the pid and every inherited descriptor.

Standard library only, run as a file without ``site`` (no package import): it runs once
per node start and costs about what ``python -I -S -c pass`` does.
"""

from __future__ import annotations

import ctypes
import os
import socket
import sys

CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
MS_BIND = 4096
MS_REC = 16384
MS_SLAVE = 1 << 19
MNT_DETACH = 2


def _fail(what: str) -> None:
    err = ctypes.get_errno()
    print(f"fi-dist netns_enter: {what}: {os.strerror(err)}", file=sys.stderr)
    sys.exit(126)


def enter(netns: str, hosts: str, hostname: str) -> None:
    """Move this (single-threaded) process into the node: network, mounts, hostname."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = os.open(netns, os.O_RDONLY)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        _fail(f"setns {netns}")
    os.close(fd)
    if libc.unshare(CLONE_NEWNS | CLONE_NEWUTS) != 0:
        _fail("unshare(mount, uts)")
    if libc.mount(b"none", b"/", None, MS_REC | MS_SLAVE, None) != 0:
        _fail("make / a slave mount")
    if libc.mount(hosts.encode(), b"/etc/hosts", None, MS_BIND, None) != 0:
        _fail(f"bind {hosts} over /etc/hosts")
    if libc.umount2(b"/sys", MNT_DETACH) == 0:  # best effort, like `ip netns exec`
        libc.mount(b"sysfs", b"/sys", b"sysfs", 0, None)
    socket.sethostname(hostname)


def main(argv: list[str]) -> None:
    if "--" not in argv:
        sys.exit("usage: netns_enter --netns PATH --hosts FILE --hostname NAME -- ARGV...")
    split = argv.index("--")
    opts = dict(zip(argv[:split:2], argv[1:split:2], strict=True))
    command = argv[split + 1:]
    enter(opts["--netns"], opts["--hosts"], opts["--hostname"])
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
