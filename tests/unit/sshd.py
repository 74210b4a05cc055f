"""A private sshd on the loopback interface, for pytest-xdist's remote (``ssh=``) workers.

:func:`loopback_sshd` generates a host key and a client key in a directory of its
own, starts ``/usr/sbin/sshd -D`` listening on 127.0.0.1 only, with root allowed by
key alone (``PermitRootLogin prohibit-password``), waits for its banner, and stops
it on exit (SIGTERM, then SIGKILL).  :class:`SshdUnavailable` says why it cannot start
(no sshd, not root, the daemon refused its configuration): the only reason to skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Sshd", "SshdUnavailable", "loopback_sshd"]

SSHD = Path("/usr/sbin/sshd")
CONFIG = """\
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {pid}
AuthorizedKeysFile {authorized}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
"""


class SshdUnavailable(Exception):
    """A private sshd cannot run here; the message says why."""


@dataclass(frozen=True)
class Sshd:
    """A running loopback sshd: where to connect and with which key."""

    port: int
    key: Path
    log: Path

    def ssh_args(self) -> str:
        """The ssh options and destination, as execnet's ``ssh=`` spec takes them."""
        return (f"-p {self.port} -i {self.key} -o BatchMode=yes -o IdentitiesOnly=yes "
                f"-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
                f"-o LogLevel=ERROR root@127.0.0.1")


def _free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                   check=True, capture_output=True, timeout=30)


def _prepare(work: Path) -> tuple[Path, Path]:
    """Keys and the configuration in *work*; returns (config, client key)."""
    if not SSHD.is_file() or shutil.which("ssh-keygen") is None:
        raise SshdUnavailable(f"no {SSHD} (apt-get install openssh-server)")
    if os.geteuid() != 0:
        raise SshdUnavailable("sshd runs as root here; this process is not root")
    try:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)   # its privilege separation dir
        _keygen(work / "host_key")
        _keygen(work / "client_key")
    except (OSError, subprocess.SubprocessError) as e:
        raise SshdUnavailable(f"cannot prepare sshd: {e}") from None
    (work / "authorized_keys").write_text((work / "client_key.pub").read_text())
    config = work / "sshd_config"
    config.write_text(CONFIG.format(host_key=work / "host_key", pid=work / "sshd.pid",
                                    authorized=work / "authorized_keys"))
    check = subprocess.run([str(SSHD), "-t", "-f", str(config)], capture_output=True,
                           text=True, timeout=30)
    if check.returncode:
        raise SshdUnavailable(f"sshd refuses its configuration: {check.stderr.strip()}")
    return config, work / "client_key"


def _wait_banner(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SshdUnavailable(f"sshd exited ({proc.returncode}): {log.read_text()[-500:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                if s.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            time.sleep(0.1)
    raise SshdUnavailable(f"sshd did not answer on 127.0.0.1:{port} within 20 s")


@contextmanager
def loopback_sshd(work: Path) -> Iterator[Sshd]:
    """A private sshd on 127.0.0.1, stopped on exit (see the module)."""
    work.mkdir(parents=True, exist_ok=True)
    config, key = _prepare(work)
    port, log = _free_port(), work / "sshd.log"
    proc = subprocess.Popen([str(SSHD), "-D", "-f", str(config), "-p", str(port),
                             "-E", str(log)], stdin=subprocess.DEVNULL)
    try:
        _wait_banner(port, proc, log)
        yield Sshd(port, key, log)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
