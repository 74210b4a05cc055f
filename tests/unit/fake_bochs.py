"""A stand-in for Debian's ``bochs-bin`` that speaks just enough of Bochs: the tests of
the Bochs backend run it instead of the emulator.

It reads the bochsrc (``-f``) or a saved state's ``config`` (``-r``): the RAM size,
the COM1 device and the log file.  It writes the log line naming its RFB port, serves
RFB 3.3 on the loopback, prints a debugger prompt on its terminal, and answers the
debugger commands the harness types (``c``, Ctrl-C, ``xp``, ``writemem``, ``setpmem``,
``page``, ``r``, ``sreg``, ``creg``, ``show``, ``q``) over a RAM that starts zeroed,
with a direct map at :data:`DIRECT_MAP`.  A click on the header bar's save button
followed by a typed directory name and Return writes a state (``config`` and
``memory.ram``) into that directory, relative to its working directory.  It says
"hello" on COM1 once it runs.

Behaviour switches, from the environment: ``FAKE_BOCHS_MODE`` = ``exit`` (exit 1 at
once, after a message), ``silent`` (never prompt), ``norfb`` (no RFB port in the log).
Run as ``fake_bochs.py``; imported, it only offers its constants.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import sys
import threading
import time

DIRECT_MAP = 0xFFFF888000000000
VMCSPTR, EPTP = 0x30976000, 0x3094D05E


class Machine:
    def __init__(self, config: str) -> None:
        mib = int(re.search(r"memory: .*guest=(\d+)", config).group(1))
        self.config = config
        self.ram = bytearray(mib << 20)
        self.log = re.search(r"^log: (.*)$", config, re.M).group(1).strip()
        self.com1 = re.search(r"com1: .*dev=\"?([^\",\s]+)", config).group(1)
        self.running = False
        self.stop_requested = threading.Event()
        self.save_dir: str | None = None
        self.dialog = threading.Lock()     # held while the save dialog runs: like Bochs,
                                           # the simulation (and its debugger) waits for it

    def phys(self, va: int) -> int | None:
        pa = va - DIRECT_MAP
        return pa if 0 <= pa < len(self.ram) else None


def rfb_server(m: Machine, sock: socket.socket) -> None:
    conn, _ = sock.accept()
    conn.sendall(b"RFB 003.003\n")
    conn.recv(12)
    conn.sendall(struct.pack(">I", 1))
    conn.recv(1)
    conn.sendall(struct.pack(">HH", 720, 530) + bytes(16) + struct.pack(">I", 4) + b"FAKE")
    clicked, typed = False, ""
    while True:
        kind = conn.recv(1)
        if not kind:
            return
        if kind == b"\x05":
            buttons, x, y = struct.unpack(">BHH", conn.recv(5))
            if buttons == 1 and y < 32 and 720 - 64 <= x < 720 - 32 and not clicked:
                m.dialog.acquire()
                clicked, typed = True, ""
        elif kind == b"\x04":
            down, _pad, sym = struct.unpack(">BHI", conn.recv(7))
            if not (down and clicked):
                continue
            if sym == 0xFF0D:
                if m.save_dir is None:
                    save(m, typed)
                    m.save_dir = typed
                elif typed == "y":
                    clicked, m.save_dir = False, None
                    m.dialog.release()
                typed = ""
            else:
                typed += chr(sym)


def save(m: Machine, name: str) -> None:
    os.makedirs(name, exist_ok=True)
    with open(os.path.join(name, "config"), "w") as f:
        f.write(m.config.replace("plugin_ctrl: ", "plugin_ctrl: usb_uhci=false, serial=true, "
                                 "old="))
    with open(os.path.join(name, "memory.ram"), "wb") as f:
        f.write(m.ram)


def xp(m: Machine, count: int, addr: int) -> str:
    lines = []
    for base in range(addr, addr + 4 * count, 16):
        words = [int.from_bytes(m.ram[a:a + 4], "little") if a + 4 <= len(m.ram)
                 else 0xFFFFFFFF for a in range(base, min(base + 16, addr + 4 * count), 4)]
        lines.append(f"0x{base:016x} <bogus+ {base - addr:7d}>:\t"
                     + "\t".join(f"0x{w:08x}" for w in words))
    return "[bochs]:\n" + "\n".join(lines)


def command(m: Machine, line: str) -> str | None:
    """Output of one debugger command (None: quit)."""
    parts = line.split()
    if not parts:
        return ""
    op = parts[0]
    if op == "q":
        return None
    if op == "xp":
        return xp(m, int(parts[1][1:-2]), int(parts[2], 0))
    if op == "writemem":
        path, va, size = line.split('"')[1], int(parts[-2], 0), int(parts[-1], 0)
        pa = m.phys(va)
        if pa is None or pa + size > len(m.ram):
            return f"bx_dbg_read_linear: physical address not available for linear {va:#x}"
        with open(path, "wb") as f:
            f.write(m.ram[pa:pa + size])
        return ""
    if op == "setpmem":
        pa, size, val = (int(p, 0) for p in parts[1:4])
        if pa + size > len(m.ram):
            return "Error: setpmem: could not set memory, out of physical bounds?"
        m.ram[pa:pa + size] = val.to_bytes(size, "little")
        return ""
    if op == "page":
        va = int(parts[1], 0)
        pa = m.phys(va)
        if pa is None:
            return "physical address not available for linear"
        return f"linear page 0x{va & ~0xFFF:016x} maps to physical page 0x{pa & ~0xFFF:012x}"
    if op == "r":
        return "CPU0:\nrax: 00000000_00000020\nrip: ffffffff_81000000\n" \
               "eflags 0x00000046: id vip vif ac vm rf nt IOPL=0"
    if op == "sreg":
        return "cs:0x0010, dh=0x00af9b00, dl=0x0000ffff, valid=1"
    if op == "creg":
        return "CR0=0x80050033: PG\nCR3=0x000000001000\nCR4=0x003326f0: VMX\nEFER=0x00000d01"
    if op == "show":
        leaf = line.split('"')[1].rsplit(".", 1)[1]
        values = {"vmcsptr": VMCSPTR, "eptptr": EPTP, "in_vmx_guest": 0}
        if leaf not in values:
            return f"can't find param <{leaf}> in global or default CPU tree"
        return f"show param name: <...>\n{leaf} = {values[leaf]:#x}"
    return f"unknown command {op}"


def main() -> int:
    mode = os.environ.get("FAKE_BOCHS_MODE", "")
    args = sys.argv[1:]
    if mode == "exit":
        print("00000000000p[      ] >>PANIC<< fake bochs refuses to start", flush=True)
        return 1
    if "-r" in args:
        config = open(os.path.join(args[args.index("-r") + 1], "config")).read()
    else:
        config = open(args[args.index("-f") + 1]).read()
    m = Machine(config)
    if "-r" in args:
        with open(os.path.join(args[args.index("-r") + 1], "memory.ram"), "rb") as f:
            m.ram[:] = f.read()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    with open(m.log, "w") as log:
        if mode != "norfb":
            log.write(f"00000000000i[RFB   ] listening for connections on port "
                      f"{sock.getsockname()[1]}\n")
    threading.Thread(target=rfb_server, args=(m, sock), daemon=True).start()
    com1 = os.open(m.com1, os.O_RDWR | os.O_NOCTTY)
    print("Bochs x86 Emulator 2.7 (fake)\nNext at t=0", flush=True)
    if mode == "silent":
        time.sleep(3600)
    signal.signal(signal.SIGINT, lambda *_: m.stop_requested.set())
    n = 1
    said_hello = False
    while True:
        sys.stdout.write(f"<bochs:{n}> ")
        sys.stdout.flush()
        n += 1
        line = sys.stdin.readline()
        if not line:
            return 0
        sys.stdout.write("\x1b[?2004l\r\r\n")        # what readline prints (echo off)
        sys.stdout.flush()
        if line.strip() == "c":
            if not said_hello:
                os.write(com1, b"hello\r\n")
                said_hello = True
            m.stop_requested.clear()
            while not m.stop_requested.wait(0.05):
                pass
            with m.dialog:
                print("^CNext at t=1")
            continue
        out = command(m, line.strip())
        if out is None:
            return 0
        if out:
            print(out)


if __name__ == "__main__":
    sys.exit(main())
