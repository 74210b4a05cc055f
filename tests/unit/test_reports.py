"""Reports of recorded runs (text, tap, json, junit, mail), through ``slatcheck report``
and ``slatcheck run --report``."""

from __future__ import annotations

import email
import json
import shlex
import shutil
import subprocess
import xml.etree.ElementTree as ET
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import yaml
from fakes import FakeWorld
from recorded import record, record_all
from reported import copy_run, edit_json

from harness.cli import main
from harness.reports.wrap import shell_lines

ANN = "Ann Tester <ann@example.org>"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An artifacts root with one recorded run of every kind (pass ... error)."""
    root = tmp_path_factory.mktemp("rec") / "art"
    record_all(root)
    return root


def _report(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(["report", *argv]) == 0
    return capsys.readouterr().out


def test_text_has_the_table_the_findings_and_the_reproducer(
        runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _report(capsys, str(runs))
    assert out.splitlines()[0].split() == ["scenario", "verdict", "outcome", "time"]
    assert "2 failed, 1 passed, 1 skipped, 1 xfailed" in out
    assert "rec-fail: FAIL in step 4 (check)" in out
    assert "wrong_frame vm=w1/vm0 gpa=0x2000 expected=0x202000 observed=0x203000" in out
    assert "InfraError: lost the GDB session" in out
    assert out.count("  reproduce: ") == 2           # the failing ones only
    assert "rec-pass: PASS" not in out and "L1 kernel 6.1.0-fake" in out


def test_text_with_a_baseline_adds_its_outcome(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    record("pass", tmp_path / "base", name="rec-x")
    record("pass", tmp_path / "base", name="rec-y")
    record("fail", tmp_path / "new", name="rec-x")
    record("pass", tmp_path / "new", name="rec-z")
    rows = _report(capsys, str(tmp_path / "new"), "--baseline",
                   str(tmp_path / "base")).splitlines()
    assert rows[0].split()[-1] == "baseline"
    assert rows[1].split()[:3] == ["rec-x", "fail", "failed"] and rows[1].split()[-1] == \
        "passed"
    assert rows[2].split()[0] == "rec-z" and rows[2].split()[-1] == "-"
    lines = _body(_mail(capsys, str(tmp_path / "new"), "--from", ANN, "--baseline",
                        str(tmp_path / "base"))).splitlines()
    assert lines[0] == "slatcheck on 6.1.0-fake: 1 of 2 failed, 1 regressed"
    assert "rec-x: fail in step 4 (check) at line 10 (baseline: passed)" in lines


def _tap_points(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(("ok ", "not ok "))]


def test_tap_is_tap_13_with_yaml_diagnostics(runs: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = _report(capsys, str(runs), "--format", "tap")
    lines = out.splitlines()
    assert lines[:2] == ["TAP version 13", "1..5"]
    assert _tap_points(out) == [
        "not ok 1 rec-error", "not ok 2 rec-fail", "ok 3 rec-pass",
        "ok 4 rec-skip # SKIP SkipScenario: bhyve needs NRIP save, which TCG lacks",
        "ok 5 rec-xfail"]
    start = lines.index("not ok 2 rec-fail") + 1
    assert lines[start] == "  ---"
    end = lines.index("  ...", start)
    diag = yaml.safe_load("\n".join(line[2:] for line in lines[start + 1:end]))
    assert diag["verdict"] == "fail" and diag["failed_step"].startswith("step 4")
    finding = diag["findings"][0]
    sig = json.loads((runs / "rec-fail" / "findings.json").read_text())[0]["signature"]
    assert (finding["signature"], finding["gpa"], finding["expected"], finding["observed"]) \
        == (sig, "0x2000", "0x202000", "0x203000")
    assert diag["reproduce"] and diag["artifacts"].endswith("rec-fail")


def test_tap_escapes_hashes_in_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                     ) -> None:
    run = record("pass", tmp_path / "art")
    assert run.artifacts is not None
    edit_json(run.artifacts / "result.json", lambda d: d.update(scenario="x#17"))
    assert _tap_points(_report(capsys, str(run.artifacts), "--format", "tap")) == \
        ["ok 1 x\\#17"]


def test_json_and_junit(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                        ) -> None:
    data = json.loads(_report(capsys, str(runs), "--format", "json", "--baseline",
                              str(runs)))
    assert data["outcomes"] == {"failed": 2, "passed": 1, "skipped": 1, "xfailed": 1}
    assert {r["scenario"]: r["baseline"] for r in data["scenarios"]}["rec-xfail"] == \
        "xfailed"
    assert main(["report", str(runs), "--format", "junit", "-o",
                 str(tmp_path / "j.xml")]) == 0
    suite = ET.parse(tmp_path / "j.xml").getroot().find("testsuite")
    assert suite is not None and len(suite.findall("testcase")) == 5
    assert len(suite.findall("testcase/failure")) == 1
    assert len(suite.findall("testcase/error")) == 1
    assert len(suite.findall("testcase/skipped")) == 1


def _mail(capsys: pytest.CaptureFixture[str], *argv: str) -> EmailMessage:
    out = _report(capsys, "--format", "mail", *argv)
    msg = email.message_from_bytes(out.encode(), policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def _body(msg: EmailMessage) -> str:
    part = msg.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def test_mail_is_a_threaded_reply(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    msg = _mail(capsys, str(runs), "--from", ANN, "--to", "kvm@vger.kernel.org",
                "--to", "Sean <sean@example.com>", "--cc", "x86@kernel.org",
                "--subject", "[PATCH v2 3/7] KVM: x86/mmu: fix the NPT walk",
                "--references", "<cover.1@example.org>",
                "--in-reply-to", "patch.3@example.org")
    assert msg["From"] == ANN
    assert msg["To"] == "kvm@vger.kernel.org, Sean <sean@example.com>"
    assert msg["Cc"] == "x86@kernel.org"
    assert msg["Subject"] == "Re: [PATCH v2 3/7] KVM: x86/mmu: fix the NPT walk"
    assert msg["In-Reply-To"] == "<patch.3@example.org>"
    assert msg["References"] == "<cover.1@example.org> <patch.3@example.org>"
    assert msg["Message-ID"].endswith("@example.org>") and msg["Date"]
    assert msg.get_content_type() == "text/plain"


def test_mail_does_not_double_re(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    msg = _mail(capsys, str(runs / "rec-pass"), "--from", ANN, "--subject", "RE: [PATCH] x")
    assert msg["Subject"] == "RE: [PATCH] x"


def test_mail_body_says_what_failed_and_how_to_reproduce(
        runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = _body(_mail(capsys, str(runs), "--from", ANN, "--baseline", str(runs)))
    lines = body.splitlines()
    assert lines[0] == "slatcheck on 6.1.0-fake: 2 of 5 failed, 1 skipped, 0 regressed"
    assert "Tested-on:" in lines and "  L1 kernel 6.1.0-fake" in lines
    assert any(line.startswith("  slatcheck 0.1.0") for line in lines)
    assert lines[lines.index("Tested-on:") + 1] == "  fake 0, accelerator tcg, L1 CPU max"
    assert any(line.split()[-1:] == ["baseline"] for line in lines)
    assert "rec-fail: fail in step 4 (check) at line 10 (baseline: failed)" in lines
    assert "    GPA 0x2000: expected 0x202000, observed 0x203000" in lines
    assert "    entry at 0x13010 = 0x0000000000203e07 (level 1)" in lines
    assert "To reproduce:" in lines
    assert lines[lines.index("Skipped:") + 1].startswith("  rec-skip: SkipScenario: bhyve")
    assert "Tested-by:" not in body


def test_tested_by_only_when_everything_passed(runs: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    good = [str(runs / "rec-pass"), str(runs / "rec-xfail")]
    body = _body(_mail(capsys, *good, "--from", ANN))
    assert body.splitlines()[0] == \
        "slatcheck on 6.1.0-fake: all 2 as expected (1 passed, 1 xfailed)"
    assert body.rstrip().splitlines()[-1] == f"Tested-by: {ANN}"
    for other in ("rec-fail", "rec-skip", "rec-error"):
        assert "Tested-by:" not in _body(_mail(capsys, *good, str(runs / other),
                                               "--from", ANN))


def test_mail_lines_fit_72_columns_however_long_the_names(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = "kvm-npt-" + "long-name-" * 5 + "end"
    run = record("fail", tmp_path / "art", name=name)
    assert run.artifacts is not None
    argv = ["/home/someone/src/slatcheck/.venv/bin/slatcheck", "run",
            f"scenarios/linux/{name}.yaml", "--artifacts", "/srv/" + "a" * 90,
            "--report", "mail=out.eml"]
    edit_json(run.artifacts / "result.json",
              lambda d: d["provenance"].update(command=argv))
    body = _body(_mail(capsys, str(run.artifacts), "--from", ANN))
    assert max(len(line) for line in body.splitlines()) <= 72
    assert name in body.replace("\n", "").replace(" ", "")
    # the reproducer is still the same command when pasted into a shell
    lines = body.splitlines()
    cmd = lines[lines.index("To reproduce:") + 1:]
    out = subprocess.run(["sh", "-c", "printf '%s\\0' " + "\n".join(cmd)
                          .split(None, 1)[1]], capture_output=True, text=True, check=True)
    assert out.stdout.split("\0")[:-1] == argv[1:]


def test_shell_lines_round_trip_through_sh() -> None:
    argv = ["slatcheck", "run", "x" * 150, "it's got 'quotes' and spaces " * 4, "end"]
    lines = shell_lines(argv, 40, indent="  ")
    assert max(map(len, lines)) <= 40
    out = subprocess.run(["sh", "-c", "printf '%s\\0' " + "\n".join(lines).split(None, 1)[1]],
                         capture_output=True, text=True, check=True)
    assert out.stdout.split("\0")[:-1] == argv[1:]


def test_kernel_provenance_and_its_fallback(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    run = record("pass", tmp_path / "art")
    assert run.artifacts is not None
    edit_json(run.artifacts / "result.json", lambda d: d["properties"].update({
        "package.linux-image-6.1.0-57-amd64-unsigned": "6.1.192-3 sha256:f43a"}))
    body = _body(_mail(capsys, str(run.artifacts), "--from", ANN))
    assert "  L1 kernel 6.1.0-fake from the Debian package" in body
    assert "linux-image-6.1.0-57-amd64-unsigned 6.1.192-3" in body
    edit_json(run.artifacts / "result.json", lambda d: d["provenance"].update(kernel={
        "release": "6.12.0-rc3+", "source": "tree", "describe": "v6.12-rc3-42-gdeadbeef",
        "config_sha256": "0123456789abcdef" * 4}))
    body = _body(_mail(capsys, str(run.artifacts), "--from", ANN))
    assert "  L1 kernel 6.12.0-rc3+ from the tree v6.12-rc3-42-gdeadbeef (config" in body
    assert "sha256 0123456789ab)" in body and "on 6.12.0-rc3+:" in body.splitlines()[0]


def _git_identity(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, config: str) -> None:
    cfg = tmp_path / "gitconfig"
    cfg.write_text(config)
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(cfg))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.chdir(tmp_path)


def test_the_sender_comes_from_git(runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    _git_identity(monkeypatch, tmp_path, "[user]\n\tname = Bo Git\n\temail = bo@example.net\n")
    msg = _mail(capsys, str(runs / "rec-pass"))
    assert msg["From"] == "Bo Git <bo@example.net>"
    assert _body(msg).rstrip().endswith("Tested-by: Bo Git <bo@example.net>")


def test_no_sender_is_exit_2(runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    _git_identity(monkeypatch, tmp_path, "")
    assert main(["report", str(runs / "rec-pass"), "--format", "mail"]) == 2
    assert "--from" in capsys.readouterr().err


LONG_SUBJECT = "[PATCH v2 3/7] KVM: x86/mmu: Zap only leaf SPTEs on memslot deletion"


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
@pytest.mark.parametrize("subject", ["[PATCH] KVM: x86: a fix", LONG_SUBJECT])
def test_git_send_email_accepts_the_mbox(runs: Path, tmp_path: Path, subject: str) -> None:
    """A patch subject as long as a real one stays on the Subject line (git send-email
    refuses a folded one: "No subject line in ...?")."""
    probe = subprocess.run(["git", "send-email", "-h"], capture_output=True, text=True)
    if "not a git command" in probe.stderr:
        pytest.skip("git send-email is not installed (Debian package git-email)")
    mbox = tmp_path / "reply.mbox"
    assert main(["report", str(runs / "rec-pass"), str(runs / "rec-xfail"),
                 "--from", ANN, "--to", "kvm@vger.kernel.org",
                 "--subject", subject, "--in-reply-to",
                 "<patch.1@example.org>", "--mbox", str(mbox)]) == 0
    assert mbox.read_text().startswith("From ann@example.org ")
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    out = subprocess.run(
        ["git", "send-email", "--dry-run", "--confirm=never", "--no-format-patch",
         "--from", ANN, "--to", "kvm@vger.kernel.org", "--smtp-server=/bin/true",
         "--suppress-cc=all", str(mbox)],
        cwd=repo, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1"})
    assert out.returncode == 0, out.stderr
    assert "Dry-OK. Log says:" in out.stdout
    assert f"Subject: Re: {subject}" in out.stdout
    assert f"Subject: Re: {subject}\n" in mbox.read_text()          # one line, not folded
    assert "In-Reply-To: <patch.1@example.org>" in out.stdout


def _scenario(tmp_path: Path) -> Path:
    """recorded.py's clean scenario as a file of its own."""
    from recorded import SCENARIO
    src = tmp_path / "src"
    src.mkdir()
    scenario = src / "x.yaml"
    scenario.write_text(SCENARIO.format(name="x", expect="", inject=""))
    return scenario


def test_run_report_writes_tap_text_and_mail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    _git_identity(monkeypatch, tmp_path, "[user]\n\tname = Bo Git\n\temail = bo@example.net\n")
    scenario = _scenario(tmp_path)
    world = FakeWorld(touched=(0x2000, 0x3000))
    status = main(["run", str(scenario), "--artifacts", str(tmp_path / "art"), "-q",
                   "--report", f"tap={tmp_path / 'out.tap'}",
                   "--report", f"text={tmp_path / 'out.txt'}",
                   "--report", f"mail={tmp_path / 'out.eml'}"],
                  services=world.services(scenario.parent))
    assert status == 0
    assert _tap_points((tmp_path / "out.tap").read_text()) == ["ok 1 x"]
    assert (tmp_path / "out.txt").read_text().startswith("scenario")
    msg = email.message_from_bytes((tmp_path / "out.eml").read_bytes(), policy=policy.default)
    assert isinstance(msg, EmailMessage) and msg["From"] == "Bo Git <bo@example.net>"
    assert _body(msg).rstrip().endswith("Tested-by: Bo Git <bo@example.net>")


def test_run_report_mail_with_no_sender_stops_before_booting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    _git_identity(monkeypatch, tmp_path, "")
    scenario = _scenario(tmp_path)
    world = FakeWorld(touched=(0x2000, 0x3000))
    assert main(["run", str(scenario), "--artifacts", str(tmp_path / "art"),
                 "--report", f"mail={tmp_path / 'out.eml'}"],
                services=world.services(scenario.parent)) == 2
    assert "--from" in capsys.readouterr().err
    assert not (tmp_path / "art").exists() and not world.machines


@pytest.mark.parametrize("damage, words", [
    (lambda d: (d / "result.json").unlink(), "neither a run directory"),
    (lambda d: (d / "result.json").write_text('{"scenario": '), "result.json:1: not JSON"),
    (lambda d: (d / "result.json").write_text('{"scenario": "x"}'), "field 'file'"),
])
def test_bad_run_dirs_are_exit_2_naming_the_file(tmp_path: Path, damage: Any, words: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    run = record("pass", tmp_path / "art")
    assert run.artifacts is not None
    damage(run.artifacts)
    for fmt in ("text", "mail"):
        assert main(["report", str(run.artifacts), "--format", fmt, "--from", ANN]) == 2
        err = capsys.readouterr().err
        assert words in err and str(run.artifacts) in err


def test_an_unknown_format_and_mbox_misuse_are_usage_errors(
        runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(runs), "--format", "pdf"]) == 2
    assert main(["report", str(runs), "--format", "tap", "--mbox", str(tmp_path / "m")]) == 2
    assert "--mbox writes a mail, not tap" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_a_copied_run_reports_the_same(runs: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    copy = copy_run(runs / "rec-fail", tmp_path / "copy")
    assert _tap_points(_report(capsys, str(copy), "--format", "tap")) == \
        ["not ok 1 rec-fail"]


def test_shlex_is_what_text_reproduces(runs: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    out = _report(capsys, str(runs / "rec-fail"))
    line = next(x for x in out.splitlines() if x.startswith("  reproduce: "))
    command = json.loads((runs / "rec-fail" / "result.json").read_text())["provenance"][
        "command"]
    assert shlex.split(line.removeprefix("  reproduce: ")) == command


@pytest.mark.parametrize("kernel, said", [
    ({"release": "6.12.9-amd64", "source": "package", "package": "linux-image-6.12.9-amd64",
      "version": "6.12.9-1~bpo12+1"},
     "the Debian package linux-image-6.12.9-amd64 6.12.9-1~bpo12+1"),
    ({"form": "package", "name": "linux-image-6.12.95+deb12-amd64-unsigned",
      "release": "6.12.95+deb12-amd64", "version": "6.12.95-1~bpo12+1"},
     "the Debian package linux-image-6.12.95+deb12-amd64-unsigned 6.12.95-1~bpo12+1"),
    ({"release": "6.12.0", "source": "deb", "file": "linux-image-6.12.0_1_amd64.deb",
      "sha256": "ab" * 32},
     "the package file linux-image-6.12.0_1_amd64.deb (sha256 abababababab)"),
    ({"form": "deb", "filename": "k.deb", "sha256": "ab" * 32, "package": "linux-image-6.12.0",
      "version": "6.12.0-1", "release": "6.12.0"},
     "the package file k.deb (linux-image-6.12.0 6.12.0-1, sha256 abababababab)"),
    ({"release": "6.12.0+", "source": "tree", "describe": "v6.12-1-g5a2e0c7d",
      "config_sha256": "cd" * 32, "sha256": "ef" * 32},
     "the tree v6.12-1-g5a2e0c7d (config sha256 cdcdcdcdcdcd)"),
    ({"form": "build-tree", "path": "/src/linux", "release": "6.12.0+",
      "config_sha256": "cd" * 32}, "the tree /src/linux (config sha256 cdcdcdcdcdcd)"),
    ({"form": "boot-image", "filename": "bzImage", "release": "6.12.0", "sha256": "ef" * 32,
      "config_sha256": "cd" * 32},
     "the boot image bzImage (sha256 efefefefefef, config sha256 cdcdcdcdcdcd)"),
])
def test_every_kernel_source_is_said(kernel: dict[str, str], said: str) -> None:
    from harness.reports.origin import kernel_source
    assert kernel_source(kernel) == said


def test_origins_say_each_thing_once() -> None:
    from harness.reports.origin import origin_lines, origin_of
    from harness.result import ScenarioResult

    def res(cpu: str) -> ScenarioResult:
        return ScenarioResult("s", Path("s.yaml"), properties={"guest.uname": "6.1.0-57-amd64"},
                              provenance={"machine": {"emulator": "qemu", "accel": "tcg",
                                                      "version": "7.2.22Debian 1:7.2+dfsg-7",
                                                      "cpu": cpu},
                                          "slatcheck": {"version": "0.1.0",
                                                        "commit": "ab" * 20 + "-dirty"}})
    lines = origin_lines([origin_of(res("max,-la57")), origin_of(res("max"))])
    assert lines == ["QEMU 7.2.22 (Debian 1:7.2+dfsg-7), accelerator tcg, L1 CPUs max,-la57; max",
                     "L1 kernel 6.1.0-57-amd64", "slatcheck 0.1.0 (commit abababababab-dirty)"]


def test_a_wide_table_loses_its_time_column_in_the_mail(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = "kvm-npt-" + "x" * 25
    record("pass", tmp_path / "art", name=name)
    text = _report(capsys, str(tmp_path / "art"), "--baseline", str(tmp_path / "art"))
    assert text.splitlines()[0].split()[-2:] == ["time", "baseline"]
    body = _body(_mail(capsys, str(tmp_path / "art"), "--from", ANN, "--baseline",
                       str(tmp_path / "art")))
    head = next(line for line in body.splitlines() if line.startswith("scenario"))
    assert head.split() == ["scenario", "verdict", "outcome", "baseline"]
    assert max(len(line) for line in body.splitlines()) <= 72


TAP_PARSER = r"""
use TAP::Parser; use JSON::PP;
my $p = TAP::Parser->new({source => $ARGV[0]});
my @yaml;
while (my $r = $p->next) { push @yaml, $r->data if $r->is_yaml; }
print JSON::PP->new->canonical->encode({version => $p->version, plan => $p->plan,
    passed => [$p->passed], failed => [$p->failed], skipped => [$p->skipped],
    errors => [$p->parse_errors], yaml => \@yaml});
"""


def test_perls_tap_parser_reads_the_stream(runs: Path, tmp_path: Path) -> None:
    """TAP::Parser (what `prove` uses), an independent reader, agrees with the stream."""
    if subprocess.run(["perl", "-MTAP::Parser", "-MJSON::PP", "-e", "1"],
                      capture_output=True).returncode != 0:
        pytest.skip("perl with TAP::Parser and JSON::PP is not installed")
    root = tmp_path / "art"
    for kind in ("pass", "fail", "skip", "error", "xfail"):
        copy_run(runs / f"rec-{kind}", root)
    edit_json(root / "rec-error" / "result.json", lambda d: d.update(
        message="InfraError: lost the GDB session\n  at: 'x' \"y\"\tz  \nlast: line"))
    assert main(["report", str(root), "--format", "tap", "-o", str(tmp_path / "t.tap")]) == 0
    out = subprocess.run(["perl", "-e", TAP_PARSER, str(tmp_path / "t.tap")],
                         capture_output=True, text=True, check=True)
    got = json.loads(out.stdout)
    assert (got["version"], got["plan"], got["errors"]) == (13, "1..5", [])
    assert (got["passed"], got["failed"], got["skipped"]) == ([3, 4, 5], [1, 2], [4])
    error, fail = got["yaml"]
    assert error["message"] == "InfraError: lost the GDB session\n  at: 'x' \"y\"\tz  \n" \
        "last: line"
    assert fail["findings"][0]["gpa"] == "0x2000" and fail["verdict"] == "fail"


def test_mbox_and_output_hold_the_same_message(runs: Path, tmp_path: Path) -> None:
    assert main(["report", str(runs / "rec-pass"), "--from", ANN, "--mbox",
                 str(tmp_path / "r.mbox"), "-o", str(tmp_path / "r.eml")]) == 0
    import mailbox
    boxed = mailbox.mbox(str(tmp_path / "r.mbox"))
    assert len(boxed) == 1
    plain = email.message_from_bytes((tmp_path / "r.eml").read_bytes(), policy=policy.default)
    assert boxed[0]["Message-ID"] == plain["Message-ID"]


def test_an_unwritable_output_is_a_usage_error(runs: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("")
    assert main(["report", str(runs), "-o", str(tmp_path / "file" / "out.txt")]) == 2
    assert "cannot write" in capsys.readouterr().err
