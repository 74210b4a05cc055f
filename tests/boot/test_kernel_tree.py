"""A kernel under test given as a build tree (``slatcheck run --kernel TREE``), end to end.

The tree is made from Debian's own kernel package, laid out as a kernel build leaves
it: its vmlinuz as ``arch/x86/boot/bzImage``, its ``boot/config-*`` as ``.config``,
``include/config/kernel.release``, and its modules in a sibling ``modules`` directory
as ``make modules_install INSTALL_MOD_PATH=modules`` puts them.  There is no
``vmlinux``: the types come from the boot image's BTF.  The smoke scenario must pass
on it, and result.json must say where the kernel came from.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.images import load_recipe
from harness.images.apt import AptContext
from harness.images.build import cache_root
from harness.images.kernel import find_moddir, kernel_release, unpack_deb

pytestmark = pytest.mark.boot

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "scenarios" / "linux" / "kvm-npt-smoke.yaml"


def _debian_kernel(work: Path) -> Path:
    """linux-amd64's kernel package, downloaded and unpacked under *work*."""
    recipe = load_recipe("linux-amd64")
    apt = AptContext(recipe.apt_architecture, cache_root() / "apt-amd64")
    (work / "debs").mkdir(parents=True)
    pkg = apt.download(apt.resolve_kernel(recipe.kernel), work / "debs")
    return unpack_deb(pkg.path, work / "pkg")


def _tree_from_package(pkg: Path, out: Path) -> Path:
    """The package's files as a build tree ``out/build`` and ``out/modules``."""
    release = kernel_release(pkg)
    tree = out / "build"
    (tree / "include/config").mkdir(parents=True)
    (tree / "include/config/kernel.release").write_text(release + "\n")
    shutil.copyfile(pkg / f"boot/config-{release}", tree / ".config")
    (tree / "arch/x86/boot").mkdir(parents=True)
    shutil.copyfile(pkg / f"boot/vmlinuz-{release}", tree / "arch/x86/boot/bzImage")
    shutil.copyfile(pkg / f"boot/System.map-{release}", tree / "System.map")
    moddir = find_moddir(pkg, release)
    assert moddir is not None
    shutil.copytree(moddir, out / "modules" / "lib" / "modules" / release, symlinks=True)
    return tree


def test_smoke_passes_on_a_build_tree(tmp_path: Path) -> None:
    tree = _tree_from_package(_debian_kernel(tmp_path / "deb"), tmp_path / "kernel")
    art = tmp_path / "art"
    res = subprocess.run([sys.executable, "-m", "harness", "run", "--kernel", str(tree),
                          "--artifacts", str(art), str(SMOKE)], cwd=ROOT, text=True,
                         capture_output=True, timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "kvm-npt-smoke: PASS" in res.stdout
    result = json.loads((art / "kvm-npt-smoke" / "result.json").read_text())
    kernel = result["provenance"]["kernel"]
    assert kernel["form"] == "build-tree" and kernel["path"] == str(tree)
    assert kernel["config_sha256"] == hashlib.sha256((tree / ".config").read_bytes()).hexdigest()
    manifest = json.loads((art / "kvm-npt-smoke" / "image-manifest.json").read_text())
    assert manifest["files"]["vmlinuz"] == hashlib.sha256(
        (tree / "arch/x86/boot/bzImage").read_bytes()).hexdigest()
    assert {m["name"] for m in manifest["modules"]} >= {"kvm", "kvm_amd"}


@pytest.mark.parametrize("image, scenario", [("linux-amd64-6.12", "kvm-npt-smoke"),
                                             ("linux-arm64-6.12", "kvm-s2-smoke")])
def test_smoke_on_the_612_line(tmp_path: Path, image: str, scenario: str) -> None:
    """Debian's 6.12 kernels (bookworm-backports): modules are .ko.xz, their split BTF
    is read from the compressed files' .BTF (struct vcpu_svm is kvm_amd's); arm64 is
    built for 52-bit VAs with LPA2 and has the reorganised kernel VA space."""
    res = subprocess.run([sys.executable, "-m", "harness", "run", "--image", image,
                          "--artifacts", str(tmp_path),
                          str(ROOT / "scenarios" / "linux" / f"{scenario}.yaml")],
                         cwd=ROOT, text=True, capture_output=True, timeout=1800)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    result = json.loads((tmp_path / scenario / "result.json").read_text())
    kernel = result["provenance"]["kernel"]
    assert kernel["form"] == "package" and kernel["release"].startswith("6.12.")
    assert "~bpo12" in kernel["version"]
