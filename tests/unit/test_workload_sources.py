"""The workload's sources build for each backend: the Linux KVM ones as the recipes say
(x86; arm64 in test_workload_report.py), the OpenBSD vmm and FreeBSD bhyve ones
checked for syntax against stand-ins of their headers (tests/data/openbsd-include,
tests/data/freebsd-include), the DragonFly vkernel one without any system header."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from harness.images import dragonfly as dfly
from harness.images import freebsd as fbsd
from harness.images.openbsd import WORKLOAD_FILES, WORKLOAD_SOURCES, firstboot_commands

ROOT = Path(__file__).resolve().parents[2]
WORKLOAD = ROOT / "images" / "workload"
SHIM = ROOT / "tests" / "data" / "openbsd-include"
FREEBSD_SHIM = ROOT / "tests" / "data" / "freebsd-include"


def recipe_build(name: str, tmp_path: Path) -> Path:
    spec = yaml.safe_load((ROOT / "images" / name / "recipe.yaml").read_text())["workload"]
    if shutil.which(spec["cc"]) is None:
        pytest.skip(f"{spec['cc']} not installed")
    out = tmp_path / f"slat-workload-{name}"
    subprocess.run([spec["cc"], *spec["cflags"], "-Werror", "-o", str(out),
                    *[str(WORKLOAD / s) for s in spec["sources"]]], check=True)
    return out


LINUX_X86 = sorted(p.parent.name for p in (ROOT / "images").glob("linux-*/recipe.yaml")
                   if yaml.safe_load(p.read_text()).get("arch") == "x86_64")


@pytest.mark.parametrize("name", LINUX_X86)
def test_every_linux_x86_workload_builds_and_reports(tmp_path: Path, name: str) -> None:
    binary = recipe_build(name, tmp_path)
    proc = subprocess.run([str(binary), "--slot", "0x1000:4K:bogus"], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 1
    assert proc.stdout.strip() == \
        '@@SLAT {"event":"error","msg":"unknown slot flag bogus (ro, log, huge)"}'


def test_openbsd_backend_compiles_against_the_vmm_structs() -> None:
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    assert set(WORKLOAD_FILES) <= {p.name for p in WORKLOAD.iterdir()}
    subprocess.run(["gcc", "-fsyntax-only", "-std=gnu11", "-Wall", "-Wextra", "-Werror",
                    "-DSLAT_OPENBSD", "-I", str(SHIM), "-I", str(WORKLOAD),
                    *[str(WORKLOAD / s) for s in WORKLOAD_SOURCES]], check=True)
    build = next(c for c in firstboot_commands() if " cc " in c)
    assert build.endswith(" ".join(WORKLOAD_SOURCES)) and "-DSLAT_OPENBSD" in build


def test_both_x86_backends_share_the_guest_code() -> None:
    linux = yaml.safe_load((ROOT / "images" / "linux-amd64" / "recipe.yaml").read_text())
    assert "l2_x86.c" in linux["workload"]["sources"] and "l2_x86.c" in WORKLOAD_SOURCES
    assert "main.c" in linux["workload"]["sources"] and "main.c" in WORKLOAD_SOURCES
    assert "hv_openbsd.c" not in linux["workload"]["sources"]


def test_freebsd_backend_compiles_against_libvmmapi() -> None:
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    assert set(fbsd.WORKLOAD_FILES) <= {p.name for p in WORKLOAD.iterdir()}
    subprocess.run(["gcc", "-fsyntax-only", "-std=gnu11", "-Wall", "-Wextra", "-Werror",
                    "-DSLAT_FREEBSD", "-I", str(FREEBSD_SHIM), "-I", str(WORKLOAD),
                    *[str(WORKLOAD / s) for s in fbsd.WORKLOAD_SOURCES]], check=True)
    assert "l2_x86.c" in fbsd.WORKLOAD_SOURCES and "main.c" in fbsd.WORKLOAD_SOURCES


def test_dragonfly_vkernel_workload_needs_no_system_header() -> None:
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    assert set(dfly.WORKLOAD_FILES) <= {p.name for p in WORKLOAD.iterdir()}
    subprocess.run(["gcc", "-fsyntax-only", "-std=gnu11", "-Wall", "-Wextra", "-Werror",
                    "-nostdinc", "-I", str(WORKLOAD),
                    *[str(WORKLOAD / s) for s in dfly.WORKLOAD_SOURCES]], check=True)
