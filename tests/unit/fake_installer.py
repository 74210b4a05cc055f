"""A fake OpenBSD installer for the install driver's tests: run on a pty, it prints what
OpenBSD's autoinstall prints (strings from distrib/miniroot/dot.profile rev 1.52 and
install.sub rev 1.1278), in order, and takes one scenario argument to fail on purpose.

    python3 fake_installer.py SCENARIO RESPONSE_URL
"""

from __future__ import annotations

import select
import sys
import time

Q = [  # (question as printed, [default], answer from the response file)
    ("Terminal type?", "vt220", "vt220"),
    ("System hostname? (short form, e.g. 'foo')", "", "l1"),
    ("Available network interfaces are: em0 vlan0.", None, None),
    ("Network interface to configure? (name, lladdr, '?', or 'done')", "em0", "em0"),
    ("IPv4 address for em0? (or 'autoconf' or 'none')", "autoconf", "autoconf"),
    ("IPv6 address for em0? (or 'autoconf' or 'none')", "none", "none"),
    ("Available network interfaces are: em0 vlan0.", None, None),
    ("Network interface to configure? (name, lladdr, '?', or 'done')", "done", "done"),
    ("Using DNS domainname my.domain", None, None),
    ("Using DNS nameservers at 10.0.2.3", None, None),
    ("Password for root account?", None, "<provided>"),
    ("Public ssh key for root account?", "none", "none"),
    ("Start sshd(8) by default?", "yes", "no"),
    ("Change the default console to com0?", "yes", "yes"),
    ("Available speeds are: 9600 19200 38400 57600 115200.", None, None),
    ("Which speed should com0 use? (or 'done')", "115200", "115200"),
    ("Setup a user? (enter a lower-case loginname, or 'no')", "no", "no"),
    ("Available disks are: sd0.", None, None),
    ("Which disk is the root disk? ('?' for details)", "sd0", "sd0"),
    ("Encrypt the root disk with a (p)assphrase or (k)eydisk?", "no", "no"),
    ("No valid MBR or GPT.", None, None),
    ("Use (W)hole disk MBR, whole disk (G)PT or (E)dit?", "whole", "whole"),
    ("Setting OpenBSD MBR partition to whole sd0...done.", None, None),
    ("URL to autopartitioning template for disklabel?", "none", "http://10.0.2.2/disklabel"),
    ("Fetching http://10.0.2.2/disklabel", None, None),
    ("/dev/rsd0a: 3891.2MB in 7969024 sectors of 512 bytes", None, None),
    ("\nLet's install the sets!", None, None),
    ("Location of sets? (disk http nfs or 'done')", "http", "http"),
    ("HTTP proxy URL? (e.g. 'http://proxy:8080', or 'none')", "none", "none"),
    ("(Unable to get list from openbsd.org, but that is OK)", None, None),
    ("HTTP Server? (hostname or 'done')", "", "http://10.0.2.2"),
    ("Server directory?", "pub/OpenBSD/7.9/amd64", "pub/OpenBSD/7.9/amd64"),
    ("\nSelect sets by entering a set name, a file name pattern or 'all'. De-select\n"
     "sets by prepending a '-', e.g.: '-game*'. Selected sets are labelled '[X]'.\n"
     "    [X] bsd           [X] base79.tgz    [X] game79.tgz    [X] xfont79.tgz\n"
     "    [X] bsd.mp        [X] comp79.tgz    [X] xbase79.tgz   [X] xserv79.tgz\n"
     "    [X] bsd.rd        [X] man79.tgz     [X] xshare79.tgz", None, None),
    ("Set name(s)? (or 'abort' or 'done')", "done", "-x* -game* done"),
    ("Get/Verify SHA256.sig   100% |**************************|  2152       00:00", None, None),
    ("Signature Verified", None, None),
    ("Installing base79.tgz   100% |**************************|   411 MB    01:02", None, None),
    ("Location of sets? (disk http nfs or 'done')", "done", "done"),
    ("What timezone are you in? ('?' for list)", "", "UTC"),
    ("Saving configuration files... done.", None, None),
    ("Making all device nodes... done.", None, None),
    ("Relinking to create unique kernel... done.", None, None),
    ("\nCONGRATULATIONS! Your OpenBSD install has been successfully completed!\n", None, None),
]

# scenario -> (index in Q before which to inject, lines); the last line ends the run
FAIL = {
    "no-answer": (16, ["Setup a user? (enter a lower-case loginname, or 'no') ",
                       "Question has no answer in response file: \"setup a user? (enter a "
                       "lower-case loginname, or 'no')\"", "failed; check /tmp/ai/ai.log"]),
    "bad-signature": (32, ["Unable to get a verified list of distribution sets."]),
    "unverified": (34, ["Directory does not contain SHA256.sig. Continue without "
                        "verification? [no] no"]),
    "checksum": (36, ["Checksum test for base79.tgz failed. Continue anyway? [no] no",
                      "failed; check /tmp/ai/ai.log"]),
    "no-template": (24, ["No autopartitioning template found."]),
    "dhcp": (5, ["No dhcp address on interface em0 in 30 seconds."]),
    "panic": (30, ["panic: kernel diagnostic assertion \"ifp != NULL\" failed: file "
                   "\"/usr/src/sys/net/if.c\", line 1234", "ddb> "]),
}
UNEXPECTED = (3, "Do you want to enable the frobnicator? [no] no")


def out(text: str) -> None:
    sys.stdout.write(text.replace("\n", "\r\n"))
    sys.stdout.flush()
    time.sleep(0.002)


def read_line(timeout: float) -> str | None:
    ready, _w, _x = select.select([sys.stdin], [], [], timeout)
    return sys.stdin.readline().strip() if ready else None


def main() -> int:
    scenario, url = sys.argv[1], sys.argv[2]
    out("erase ^?, werase ^W, kill ^U, intr ^C, status ^T\n\n")
    out("Welcome to the OpenBSD/amd64 7.9 installation program.\n")
    out("Starting non-interactive mode in 5 seconds...\n")
    out("(I)nstall, (U)pgrade, (A)utoinstall or (S)hell? ")
    reply = read_line(5.0)
    if reply not in (None, "a"):
        out(f"\nunexpected menu answer {reply!r}\n")
        return 3
    out("\n")
    if scenario == "response-file":
        out("Could not determine auto mode.\n")
        out("Response file location? [http://10.0.2.2/install.conf] ")
        got = read_line(10.0)
        if got != url:
            out(f"\nwrong response file location {got!r}\n")
            return 4
        out(f"Fetching {url}\n")
    else:
        out("Fetching http://10.0.2.2/install.conf?path=7.9/amd64\n")
    if scenario == "silent":
        time.sleep(30)
        return 5
    out("Performing non-interactive install...\n")
    for i, (text, default, answer) in enumerate(Q):
        if scenario in FAIL and FAIL[scenario][0] == i:
            for line in FAIL[scenario][1]:
                out(line + ("" if line.endswith("> ") else "\n"))
            time.sleep(1)
            return 1
        if scenario == "unexpected" and UNEXPECTED[0] == i:
            out(UNEXPECTED[1] + "\n")
        if answer is None:
            out(text + "\n")
        else:
            out(f"{text} {f'[{default}] ' if default else ''}{answer}\n")
    out("syncing disks... done\nrebooting...\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
