"""Relay standard input and output to a TCP server: QEMU's ``guestfwd=...-cmd:`` helper.

QEMU's user network runs the ``cmd:`` once per guest connection with the
connection on the command's stdin/stdout; this relays it to a loopback server
(the OpenBSD install's HTTP server), so no socat is needed.

    python3 -m harness.images.tcprelay 127.0.0.1 8080
"""

from __future__ import annotations

import os
import socket
import sys
import threading

__all__ = ["relay", "main"]

CHUNK = 1 << 16


def _pump_in(fd: int, sock: socket.socket) -> None:
    """stdin -> socket, then half-close the socket."""
    try:
        while chunk := os.read(fd, CHUNK):
            sock.sendall(chunk)
    except OSError:
        pass
    finally:
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def relay(host: str, port: int, fd_in: int = 0, fd_out: int = 1) -> None:
    """Copy *fd_in* to ``host:port`` and the answers to *fd_out* until the server closes."""
    with socket.create_connection((host, port), timeout=60) as sock:
        threading.Thread(target=_pump_in, args=(fd_in, sock), daemon=True).start()
        while chunk := sock.recv(CHUNK):
            os.write(fd_out, chunk)


def main(argv: list[str] | None = None) -> int:
    """``tcprelay HOST PORT``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python3 -m harness.images.tcprelay HOST PORT", file=sys.stderr)
        return 2
    relay(args[0], int(args[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
