"""A minimal RFB (VNC) client: enough to press Bochs's own "save state" button.

Bochs 2.7's only way to save a running machine is its GUI: the header bar's
save button asks for a directory on the GUI's text console (keyboard input),
writes the state, then asks whether to continue.  Debian's Bochs has no
headless display library, only ``rfb`` (a built-in VNC server) and ``term``
(which takes over SIGINT, the debugger's break key), so the harness drives the
``rfb`` display with this client.

Protocol: RFB 3.3 (RFC 6143 with the 3.3 handshake): the server sends its
version, the client answers ``RFB 003.003``, the server names the security
type (a u32, 1 = none), the client sends ClientInit (shared flag), the server
sends ServerInit (width, height, pixel format, name).  Then the client sends
PointerEvent (type 5: button mask, x, y) and KeyEvent (type 4: down flag,
X11 keysym) messages.  Whatever the server sends afterwards (framebuffer
updates) is read and dropped by a thread, so that the server never blocks on a
full socket.

>>> pointer_event(1, 672, 8).hex()
'050102a00008'
>>> key_event(0xFF0D, True).hex()
'040100000000ff0d'
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from types import TracebackType

from harness.errors import InfraError

__all__ = ["RfbClient", "RfbError", "pointer_event", "key_event", "keysym", "XK_RETURN"]

XK_RETURN = 0xFF0D
SECURITY_NONE = 1
VERSION = b"RFB 003.003\n"
KEY_DELAY = 0.04           # seconds between key events: Bochs's console takes 16 keys per poll


class RfbError(InfraError):
    """The VNC server did not answer as RFB 3.3 says."""


def pointer_event(buttons: int, x: int, y: int) -> bytes:
    """A PointerEvent message: button mask (bit 0 = left), position."""
    return struct.pack(">BBHH", 5, buttons, x, y)


def key_event(sym: int, down: bool) -> bytes:
    """A KeyEvent message for X11 keysym *sym* (Latin-1 characters are their own keysym)."""
    return struct.pack(">BBHI", 4, 1 if down else 0, 0, sym)


def keysym(ch: str) -> int:
    """The keysym that types *ch* (printable ASCII, or a newline = Return)."""
    if ch == "\n":
        return XK_RETURN
    if not " " <= ch <= "~":
        raise ValueError(f"cannot type {ch!r} on the RFB console")
    return ord(ch)


class RfbClient:
    """One connection to an RFB server on the loopback; a context manager."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.port = port
        self.host = host
        self.timeout = timeout
        self.width = 0
        self.height = 0
        self.name = ""
        self._sock: socket.socket | None = None
        self._drain: threading.Thread | None = None

    def __enter__(self) -> RfbClient:
        self.connect()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _recv_exact(self, n: int) -> bytes:
        assert self._sock is not None
        out = b""
        while len(out) < n:
            chunk = self._sock.recv(n - len(out))
            if not chunk:
                raise RfbError(f"RFB server on port {self.port} closed the connection "
                               f"during the handshake")
            out += chunk
        return out

    def connect(self) -> None:
        """Handshake: version, security (none), ClientInit, ServerInit; then drain."""
        try:
            self._sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            version = self._recv_exact(12)
            if not version.startswith(b"RFB 003."):
                raise RfbError(f"port {self.port} is not an RFB server: {version!r}")
            self._sock.sendall(VERSION)
            (security,) = struct.unpack(">I", self._recv_exact(4))
            if security != SECURITY_NONE:
                raise RfbError(f"RFB server asks for security type {security}, not none")
            self._sock.sendall(b"\x01")                   # ClientInit: shared
            init = self._recv_exact(24)
            self.width, self.height = struct.unpack(">HH", init[:4])
            (name_len,) = struct.unpack(">I", init[20:24])
            self.name = self._recv_exact(name_len).decode(errors="replace")
        except OSError as exc:
            self.close()
            raise RfbError(f"cannot talk RFB to {self.host}:{self.port}: {exc}") from exc
        except RfbError:
            self.close()
            raise
        self._sock.settimeout(None)
        self._drain = threading.Thread(target=self._discard, daemon=True)
        self._drain.start()

    def _discard(self) -> None:
        """Read and drop whatever the server sends, until the socket closes."""
        sock = self._sock
        try:
            while sock is not None and sock.recv(65536):
                pass
        except OSError:
            pass

    def send(self, message: bytes) -> None:
        """Send one client message."""
        if self._sock is None:
            raise RfbError("RFB client is not connected")
        try:
            self._sock.sendall(message)
        except OSError as exc:
            raise RfbError(f"RFB send failed: {exc}") from exc

    def click(self, x: int, y: int) -> None:
        """Press and release the left button at (x, y)."""
        self.send(pointer_event(1, x, y))
        self.send(pointer_event(0, x, y))

    def type(self, text: str, delay: float = KEY_DELAY) -> None:
        """Type *text* key by key (newline = Return), *delay* seconds per event."""
        for ch in text:
            sym = keysym(ch)
            self.send(key_event(sym, True))
            time.sleep(delay)
            self.send(key_event(sym, False))
            time.sleep(delay)

    def close(self) -> None:
        """Close the connection; the drain thread ends with it.  Idempotent."""
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        if self._drain is not None:
            self._drain.join(timeout=2.0)
            self._drain = None
