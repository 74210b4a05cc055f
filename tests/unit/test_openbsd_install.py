"""The OpenBSD install driver against a fake installer run on a pty (tests/unit/fake_installer.py).

The fake prints autoinstall's lines from the sources' strings, in order, and fails on
purpose per scenario; the driver must get through the good runs and name the
installer's message in every failure, including a question it does not expect.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pexpect
import pytest

from harness.images.openbsd_install import (
    INSTALL_FAILURES,
    INSTALL_PROMPTS,
    InstallError,
    drive_install,
)

FAKE = Path(__file__).parent / "fake_installer.py"
URL = "http://10.0.2.100/install.conf"


def run(scenario: str, step_timeout: float = 10) -> tuple[object, pexpect.spawn]:
    child = pexpect.spawn(sys.executable, [str(FAKE), scenario, URL], encoding="utf-8",
                          timeout=step_timeout)
    try:
        result = drive_install(child, response_url=URL, step_timeout=step_timeout)
        child.expect(pexpect.EOF)    # let the fake end on its own before its pty closes
        return result, child         # (closed early, its last flush failed: exit 120)
    finally:
        child.close(force=True)


def test_a_full_autoinstall_succeeds() -> None:
    result, child = run("success")
    assert result.prompts == [
        "menu", "terminal", "hostname", "interface", "ipv4", "ipv6", "interface",
        "root_password", "root_ssh_key", "sshd", "console", "console_speed", "user",
        "root_disk", "encrypt", "partitioning", "disklabel_template", "sets_location",
        "http_proxy", "http_server", "server_directory", "set_names", "sets_location_done",
        "timezone"]
    assert result.answered == [("menu", "a")]
    assert child.exitstatus == 0


def test_response_file_location_is_answered() -> None:
    result, _child = run("response-file")
    assert ("response_file", URL) in result.answered
    assert result.prompts[:3] == ["menu", "response_file", "terminal"]


@pytest.mark.parametrize("scenario, message", [
    ("no-answer", r"a question the response file misses.*Question has no answer"),
    ("bad-signature", r"SHA256.sig did not verify.*Unable to get a verified list"),
    ("unverified", r"could not verify the sets.*Directory does not contain SHA256.sig"),
    ("checksum", r"a set's checksum differs.*Checksum test for base79.tgz failed"),
    ("no-template", r"disklabel template was not served.*No autopartitioning template"),
    ("dhcp", r"no DHCP lease.*No dhcp address on interface em0"),
    ("panic", r"installer kernel panicked.*panic: kernel diagnostic assertion"),
])
def test_every_failure_is_named(scenario: str, message: str) -> None:
    with pytest.raises(InstallError, match=message):
        run(scenario)


def test_an_unexpected_question_fails() -> None:
    with pytest.raises(InstallError, match=r"unexpected question 'Do you want to enable the "
                                           r"frobnicator\? \[no\] no' \(after 'hostname'"):
        run("unexpected")


def test_silence_and_eof_fail() -> None:
    with pytest.raises(InstallError, match=r"TIMEOUT after prompt 'menu'"):
        run("silent", step_timeout=2)


def test_tables_are_consistent() -> None:
    names = [p.name for p in INSTALL_PROMPTS]
    assert len(names) == len(set(names))
    assert all(why for _p, why in INSTALL_FAILURES)
    assert {p.name for p in INSTALL_PROMPTS if p.send} == {"menu", "response_file", "mode"}
