"""Which process holds the server side of a TCP connection (Linux /proc), for the tests of
``serve --workers N``: the worker that accepted a socket is read from the kernel, not guessed."""

from __future__ import annotations

import os
from pathlib import Path


def children(pid: int) -> list[int]:
    """The living direct children of ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            data = Path(f"/proc/{entry}/stat").read_text(encoding="ascii", errors="replace")
        except OSError:
            continue
        if int(data[data.rindex(")") + 2 :].split()[1]) == pid:
            found.append(int(entry))
    return found


def _socket_inode(server_port: int, client_port: int) -> int | None:
    """The inode of the established socket whose local port is ``server_port`` and remote port
    ``client_port`` (the server's end of the connection), from /proc/net/tcp and tcp6."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text(encoding="ascii").splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
            if state != "01":  # TCP_ESTABLISHED
                continue
            if (
                int(local.rsplit(":", 1)[1], 16) == server_port
                and int(remote.rsplit(":", 1)[1], 16) == client_port
            ):
                return inode
    return None


def socket_owner(server_port: int, client_port: int, candidates: list[int]) -> int | None:
    """Which of ``candidates`` (pids) holds the server end of the connection from
    ``client_port``, or None if none does (yet)."""
    inode = _socket_inode(server_port, client_port)
    if inode is None:
        return None
    wanted = f"socket:[{inode}]"
    for pid in candidates:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == wanted:
                    return pid
            except OSError:
                continue
    return None
