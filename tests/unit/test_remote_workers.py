"""Multi-host runs through pytest-xdist's own remote workers: scenario items (on the
scripted machine) sent over ssh to a private sshd on the loopback interface
(tests/unit/sshd.py) run there, report back, and append to one history."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from recorded import SCENARIO
from sshd import SshdUnavailable, loopback_sshd

from harness.history.store import open_store, read_rows

pytest_plugins = ["pytester"]
HERE = Path(__file__).resolve().parent

CONFTEST = '''
import os, sys
sys.path.insert(0, {here!r})
from fakes import FakeWorld

def pytest_slatcheck_services(config):
    # which worker ran the item, and from where its ssh connection came
    with open({log!r}, "a") as f:
        f.write(os.environ.get("PYTEST_XDIST_WORKER", "controller") + " "
                + os.environ.get("SSH_CONNECTION", "local") + "\\n")
    return FakeWorld(touched=(0x2000, 0x3000)).services(config.rootpath)
'''


def test_items_run_on_remote_workers_over_ssh(pytester: pytest.Pytester,
                                              tmp_path: Path) -> None:
    pytester.makeconftest(CONFTEST.format(here=str(HERE), log=str(tmp_path / "workers.log")))
    d = pytester.mkdir("scenarios")
    for n in range(4):
        (d / f"r{n}.yaml").write_text(SCENARIO.format(name=f"r{n}", expect="", inject=""))
    remote = tmp_path / "remote"
    db = tmp_path / "h.sqlite"
    try:
        with loopback_sshd(tmp_path / "sshd") as sshd:
            tx = f"ssh={sshd.ssh_args()}//python={sys.executable}//chdir={remote}"
            res = pytester.runpytest_subprocess(
                "-d", "--tx", tx, "--tx", tx, "--rsyncdir", str(pytester.path),
                str(d), "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning",
                "--slat-artifacts", str(tmp_path / "art"), "--slat-history", str(db),
                timeout=300)
    except SshdUnavailable as e:
        pytest.skip(f"no private sshd here: {e}")
    res.assert_outcomes(passed=4)
    workers = (tmp_path / "workers.log").read_text().split("\n")
    ran = [ln.split() for ln in workers if ln]
    assert len(ran) == 4 and {w[0] for w in ran} <= {"gw0", "gw1"}
    assert all(w[1] == "127.0.0.1" for w in ran)       # SSH_CONNECTION: over the loopback
    assert sorted(p.name for p in (tmp_path / "art").iterdir()) == ["r0", "r1", "r2", "r3"]
    assert (remote / pytester.path.name / "scenarios" / "r0.yaml").is_file()   # rsynced
    with open_store(db) as conn:
        rows = read_rows(conn)
    assert sorted(r.scenario for r in rows) == ["r0", "r1", "r2", "r3"]
    assert len({r.run_id for r in rows}) == 1                # one run id for the session
