"""The kernel under test given by path (harness.images.kernel): its three forms, the
refusal of an unfit one, depmod, compressed modules and their BTF, the cache key."""

from __future__ import annotations

import hashlib
import json
import lzma
import shutil
import subprocess
from pathlib import Path

import pytest

from harness import cli
from harness.errors import InfraError, ScenarioError
from harness.images import build as build_mod
from harness.images import kmod, load_recipe
from harness.images.apt import suite_options
from harness.images.build import Image, build_image, cache_root
from harness.images.kernel import (
    KernelRefused,
    KernelSource,
    locate_kernel,
    missing_options,
    parse_config,
)
from harness.kernel_image import btf_section

RELEASE = "6.1.0-test"
KVM_DIR = "kernel/arch/x86/kvm"
BTF_BLOB = b"\x9f\xeb\x01\x00" + bytes(20)   # a BTF header, no types

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("objcopy") is None,
                               reason="gcc and binutils not installed")


def _config(drop: tuple[str, ...] = ()) -> str:
    """A .config with every option linux-amd64 requires but *drop*."""
    lines = []
    for item in load_recipe("linux-amd64").kernel_config:
        name, _, want = item.partition("=")
        lines.append(f"# CONFIG_{name} is not set" if name in drop else
                     f"CONFIG_{name}={want or 'y'}")
    return "\n".join(lines) + "\n"


def _object(tmp: Path, source: str, out: Path, btf: bytes | None = None) -> Path:
    """Compile *source* into the ELF object *out* (optionally with a .BTF section)."""
    src = tmp / f"{out.name}.c"
    src.write_text(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["gcc", "-c", "-o", str(out), str(src)], check=True)
    if btf is not None:
        blob = tmp / f"{out.name}.btf"
        blob.write_bytes(btf)
        subprocess.run(["objcopy", "--add-section", f".BTF={blob}", str(out)], check=True)
    return out


def _modules(tmp: Path, moddir: Path, compress: bool = False) -> None:
    """kvm (exports kvm_hook) and kvm-amd (calls it), as modules_install lays them out."""
    modinfo = '__attribute__((section(".modinfo"), used)) static const char m[] = "license=GPL";\n'
    kvm = _object(tmp, modinfo + '__attribute__((section("__ksymtab_strings"), used)) '
                  'static const char ks[] = "kvm_hook";\nvoid kvm_hook(void) {}\n',
                  moddir / KVM_DIR / "kvm.ko", btf=BTF_BLOB)
    _object(tmp, modinfo + "extern void kvm_hook(void);\nvoid f(void) { kvm_hook(); }\n",
            moddir / KVM_DIR / "kvm-amd.ko", btf=BTF_BLOB)
    if compress:
        kvm.with_name("kvm.ko.xz").write_bytes(lzma.compress(kvm.read_bytes()))
        kvm.unlink()


def build_tree(tmp: Path, drop: tuple[str, ...] = ()) -> Path:
    """A built O= tree: .config, kernel.release, bzImage, vmlinux (with .BTF), and its
    modules installed into the sibling ``modules`` directory."""
    tree = tmp / "build"
    (tree / "include/config").mkdir(parents=True)
    (tree / "include/config/kernel.release").write_text(RELEASE + "\n")
    (tree / ".config").write_text(_config(drop))
    (tree / "arch/x86/boot").mkdir(parents=True)
    (tree / "arch/x86/boot/bzImage").write_bytes(b"MZ bzImage of the test")
    _object(tmp, "int x;\n", tree / "vmlinux", btf=BTF_BLOB)
    (tree / "System.map").write_text("ffffffff81000000 T _text\n")
    _modules(tmp, tmp / "modules" / "lib" / "modules" / RELEASE)
    return tree


# ---- configuration and refusal ----------------------------------------------------------

def test_missing_options_name_what_is_wrong() -> None:
    config = parse_config("CONFIG_KVM=m\nCONFIG_KVM_AMD=y\n# CONFIG_FUTEX is not set\n")
    assert missing_options(config, ["KVM", "KVM_AMD=m", "FUTEX", "KVM=m"]) == [
        "CONFIG_KVM_AMD=m (is y)", "CONFIG_FUTEX (is not set)"]
    assert missing_options(config, ["KVM"]) == []


@needs_gcc
def test_a_tree_without_kvm_amd_and_btf_is_refused_before_building(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = build_tree(tmp_path, drop=("KVM_AMD", "DEBUG_INFO_BTF"))

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("an unfit kernel must not be built into an image")

    monkeypatch.setattr(build_mod, "_assemble", no_build)
    with pytest.raises(KernelRefused) as err:
        build_image("linux-amd64", progress=lambda s: None, cache_dir=tmp_path / "c",
                    kernel=KernelSource(tree))
    assert "CONFIG_KVM_AMD=m (is not set)" in str(err.value)
    assert "CONFIG_DEBUG_INFO_BTF (is not set)" in str(err.value)
    assert RELEASE in str(err.value) and err.value.exit_status == 2
    assert [p.name for p in cache_root(tmp_path / "c").iterdir()] == []


def test_a_missing_path_and_a_bare_boot_image_are_refused(tmp_path: Path) -> None:
    with pytest.raises(KernelRefused, match="no such file"):
        locate_kernel(KernelSource(tmp_path / "nope"), "x86_64", tmp_path)
    (tmp_path / "bzImage").write_bytes(b"MZ")
    with pytest.raises(KernelRefused, match="--modules"):
        locate_kernel(KernelSource(tmp_path / "bzImage"), "x86_64", tmp_path)
    with pytest.raises(KernelRefused, match="not a built kernel tree"):
        (tmp_path / "src").mkdir()
        (tmp_path / "src" / ".config").write_text("")
        locate_kernel(KernelSource(tmp_path / "src"), "x86_64", tmp_path)


# ---- the three forms --------------------------------------------------------------------

@needs_gcc
def test_build_tree_with_sibling_modules(tmp_path: Path) -> None:
    tree = build_tree(tmp_path)
    files = locate_kernel(KernelSource(tree), "x86_64", tmp_path / "work")
    assert files.form == "build-tree" and files.release == RELEASE
    assert files.boot_image == tree / "arch/x86/boot/bzImage"
    assert files.vmlinux == tree / "vmlinux"
    assert files.moddir == tmp_path / "modules/lib/modules" / RELEASE
    assert files.provenance["config_sha256"] == hashlib.sha256(
        (tree / ".config").read_bytes()).hexdigest()
    with pytest.raises(KernelRefused, match="arch/arm64/boot/Image"):
        locate_kernel(KernelSource(tree), "aarch64", tmp_path / "work")


@needs_gcc
def test_build_tree_modules_given_explicitly(tmp_path: Path) -> None:
    tree = build_tree(tmp_path)
    shutil.move(tmp_path / "modules", tmp_path / "elsewhere")
    assert locate_kernel(KernelSource(tree), "x86_64", tmp_path).moddir is None
    given = locate_kernel(KernelSource(tree, tmp_path / "elsewhere"), "x86_64", tmp_path)
    assert given.moddir == tmp_path / "elsewhere/lib/modules" / RELEASE
    with pytest.raises(KernelRefused, match="modules_install"):
        locate_kernel(KernelSource(tree, tmp_path), "x86_64", tmp_path)


@needs_gcc
def test_build_tree_in_git_records_its_describe(tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    tree = build_tree(tmp_path)
    git = ["git", "-C", str(tree), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "v"], check=True)
    subprocess.run([*git, "tag", "-a", "-m", "v", "v6.1-test"], check=True)
    files = locate_kernel(KernelSource(tree), "x86_64", tmp_path / "work")
    assert files.provenance["git_describe"].startswith("v6.1-test")


@needs_gcc
def test_boot_image_with_modules_and_config_beside(tmp_path: Path) -> None:
    tree = build_tree(tmp_path)
    image = tmp_path / "boot" / "vmlinuz"
    image.parent.mkdir()
    shutil.copyfile(tree / "arch/x86/boot/bzImage", image)
    source = KernelSource(image, tmp_path / "modules")
    with pytest.raises(KernelRefused, match="config-6.1.0-test"):
        locate_kernel(source, "x86_64", tmp_path)
    (image.parent / f"config-{RELEASE}").write_text(_config())
    files = locate_kernel(source, "x86_64", tmp_path)
    assert files.form == "boot-image" and files.release == RELEASE
    assert files.vmlinux is None and files.boot_image == image
    assert files.provenance["sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()


@needs_gcc
def test_local_deb(tmp_path: Path) -> None:
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb not installed")
    pkg = tmp_path / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN/control").write_text(
        "Package: linux-image-6.1.0-test\nVersion: 6.1.1-1\nArchitecture: amd64\n"
        "Maintainer: t <t@t>\nDescription: test kernel\n")
    (pkg / "boot").mkdir()
    (pkg / f"boot/vmlinuz-{RELEASE}").write_bytes(b"MZ")
    (pkg / f"boot/config-{RELEASE}").write_text(_config())
    _modules(tmp_path, pkg / "lib/modules" / RELEASE, compress=True)
    deb = tmp_path / "linux-image-6.1.0-test_6.1.1-1_amd64.deb"
    subprocess.run(["dpkg-deb", "-Zxz", "--build", str(pkg), str(deb)], check=True,
                   capture_output=True)
    files = locate_kernel(KernelSource(deb), "x86_64", tmp_path / "work")
    assert files.form == "deb" and files.release == RELEASE
    assert files.provenance["filename"] == deb.name
    assert files.provenance["sha256"] == hashlib.sha256(deb.read_bytes()).hexdigest()
    assert files.provenance["version"] == "6.1.1-1"
    assert files.moddir is not None and (files.moddir / KVM_DIR / "kvm.ko.xz").is_file()


# ---- modules: depmod, decompression, BTF ------------------------------------------------

@needs_gcc
def test_depmod_orders_and_decompresses(tmp_path: Path) -> None:
    tree = build_tree(tmp_path)
    files = locate_kernel(KernelSource(tree), "x86_64", tmp_path)
    assert files.moddir is not None
    kvm = files.moddir / KVM_DIR / "kvm.ko"
    kvm.with_name("kvm.ko.xz").write_bytes(lzma.compress(kvm.read_bytes()))
    kvm.unlink()
    out = tmp_path / "out"
    (out / "modules").mkdir(parents=True)
    contents, dep = build_mod._install_modules(load_recipe("linux-amd64"), files,
                                               tmp_path / "work", out, lambda s: None)
    assert list(contents) == [f"{KVM_DIR}/kvm.ko", f"{KVM_DIR}/kvm-amd.ko"]
    assert dep.splitlines() == [f"{KVM_DIR}/kvm.ko:", f"{KVM_DIR}/kvm-amd.ko: {KVM_DIR}/kvm.ko"]
    assert (out / "modules/kvm.ko").read_bytes().startswith(b"\x7fELF")
    assert not (files.moddir / "modules.dep").exists()   # depmod ran on a copy


def test_load_order_names_a_missing_module() -> None:
    with pytest.raises(InfraError, match="kvm_amd"):
        kmod.load_order({Path("kernel/kvm.ko"): ()}, ["kvm_amd"])


@needs_gcc
def test_btf_of_a_compressed_module(tmp_path: Path) -> None:
    ko = _object(tmp_path, "int y;\n", tmp_path / "m.ko", btf=BTF_BLOB)
    xz = tmp_path / "m.ko.xz"
    xz.write_bytes(lzma.compress(ko.read_bytes()))
    assert btf_section(kmod.module_elf(xz)) == BTF_BLOB
    if shutil.which("zstd"):
        subprocess.run(["zstd", "-q", str(ko), "-o", str(tmp_path / "m.ko.zst")], check=True)
        assert btf_section(kmod.module_elf(tmp_path / "m.ko.zst")) == BTF_BLOB


def _cached_modules() -> Path | None:
    """The modules directory of a cached linux-amd64 image of Debian's kernel (kvm and
    kvm_amd both modules), if one was built."""
    for d in sorted(cache_root().glob("linux-amd64-[0-9a-f]*/modules")):
        if all((d / m).is_file() for m in ("kvm.ko", "kvm-amd.ko", "../vmlinuz")):
            return d
    return None


def test_split_btf_of_debian_xz_modules(tmp_path: Path) -> None:
    """The 6.12 layout: kvm and kvm_amd as .ko.xz; struct vcpu_svm is in kvm_amd's BTF."""
    from harness.guests.linux import parse_types
    cached = _cached_modules()
    if cached is None:
        pytest.skip("no cached linux-amd64 image (slatcheck images build linux-amd64)")
    (tmp_path / "modules").mkdir()
    for name in ("kvm.ko", "kvm-amd.ko"):
        data = (cached / name).read_bytes()
        (tmp_path / "modules" / f"{name}.xz").write_bytes(lzma.compress(data))
    shutil.copyfile(cached.parent / "vmlinuz", tmp_path / "vmlinuz")
    image = Image(name="linux-amd64", arch="x86_64", dir=tmp_path,
                  kernel=tmp_path / "vmlinuz", initrd=tmp_path / "i",
                  modules=tmp_path / "modules", manifest={})
    types = parse_types(image, ["kvm", "kvm_amd"])
    assert types.sizeof("struct vcpu_svm") > types.sizeof("struct kvm_vcpu") > 0


# ---- the cache key ----------------------------------------------------------------------

def _fake_assemble(recipe: object, root: Path, work: Path, out: Path, progress: object,
                   files: object) -> dict[str, object]:
    for name in ("vmlinuz", "initramfs.cpio.gz", "slat-workload"):
        (out / name).write_bytes(name.encode())
    (out / "modules").mkdir()
    return {"packages": [], "kernel_release": RELEASE, "modules": [],
            "kernel": dict(getattr(files, "provenance", {}))}


@needs_gcc
def test_cache_key_follows_the_kernels_content(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build_mod, "_assemble", _fake_assemble)
    tree = build_tree(tmp_path)
    cache = tmp_path / "cache"

    def build() -> Path:
        return build_image("linux-amd64", progress=lambda s: None, cache_dir=cache,
                           kernel=KernelSource(tree)).dir

    first = build()
    assert build() == first                                    # unchanged: reused
    (tree / "arch/x86/boot/bzImage").write_bytes(b"MZ rebuilt")
    second = build()
    ko = tmp_path / "modules/lib/modules" / RELEASE / KVM_DIR / "kvm-amd.ko"
    ko.write_bytes(ko.read_bytes() + b"\0")
    third = build()
    assert len({first, second, third}) == 3
    assert first.name.startswith("linux-amd64-")
    manifest = json.loads((third / "manifest.json").read_text())
    assert manifest["kernel"]["form"] == "build-tree"
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot" / "config").write_text((tree / ".config").read_text())
    image = tmp_path / "boot" / "bzImage"
    image.write_bytes((tree / "arch/x86/boot/bzImage").read_bytes())
    same = build_image("linux-amd64", progress=lambda s: None, cache_dir=cache,
                       kernel=KernelSource(image, tmp_path / "modules"))
    assert same.dir == third                         # the same content: the same image
    assert same.manifest["kernel"]["form"] == "boot-image"   # but its own provenance


# ---- command line, scenario and apt -----------------------------------------------------

SMOKE = Path(__file__).resolve().parents[2] / "scenarios/linux/kvm-npt-smoke.yaml"


def test_image_option_runs_a_scenario_on_another_image() -> None:
    [sc] = cli._load_all([SMOKE], "linux-amd64-6.12")
    assert sc.guest.image == "linux-amd64-6.12" and sc.hypervisor == "linux-kvm-svm"
    with pytest.raises(ScenarioError, match="linux-arm64"):
        cli._load_all([SMOKE], "linux-arm64")


def test_modules_without_kernel_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--modules", "m", str(SMOKE)]) == 2
    assert "--modules goes with --kernel" in capsys.readouterr().err


def test_scenario_guest_kernel_is_relative_to_the_file(tmp_path: Path) -> None:
    from harness.scenario import load_scenario
    text = SMOKE.read_text().replace("  image: linux-amd64\n",
                                     "  image: linux-amd64\n  kernel: k/build\n"
                                     "  modules: k/modules\n")
    path = tmp_path / "s.yaml"
    path.write_text(text)
    kernel = load_scenario(path).guest.kernel
    assert kernel == KernelSource(tmp_path / "k/build", tmp_path / "k/modules")


def test_recipe_kernel_path_is_relative_to_the_recipe(tmp_path: Path) -> None:
    from harness.images import parse_recipe
    text = load_recipe("linux-amd64").path.read_text()
    text = text.replace("  metapackage: linux-image-amd64", "  path: ../k/build")
    recipe = parse_recipe(text, "r", tmp_path / "images" / "x")
    assert recipe.kernel.source == KernelSource(tmp_path / "images/x/../k/build")
    assert "KVM_AMD=m" in recipe.kernel_config


def test_backports_suite_gets_a_sources_list_of_its_own(tmp_path: Path) -> None:
    opts = suite_options(tmp_path, "bookworm-backports", "http://deb.debian.org/debian")
    assert f"-oDir::Etc::SourceList={tmp_path / 'sources.list'}" in opts
    assert "-oAPT::Default-Release=bookworm-backports" in opts
    assert any(o.startswith("-oDir::Etc::SourceParts=") for o in opts)
    assert "bookworm-backports main" in (tmp_path / "sources.list").read_text()
    for name in ("linux-amd64-6.12", "linux-arm64-6.12"):
        spec = load_recipe(name).kernel
        assert spec.suite == "bookworm-backports" and spec.metapackage is not None


def test_facts_of_the_kernel_for_observers(tmp_path: Path) -> None:
    from harness.check import _image_facts
    from harness.images.kernel import config_facts, release_facts
    assert release_facts("6.12.95+deb12-arm64") == {"LINUX_VERSION_CODE": 0x060C5F}
    assert release_facts("6.1.0-57-amd64") == {"LINUX_VERSION_CODE": 0x060100}
    assert config_facts("CONFIG_ARM64_VA_BITS=52\nCONFIG_KVM=y\n") == {
        "CONFIG_ARM64_VA_BITS": 52}
    image = Image(name="linux-arm64-6.12", arch="aarch64", dir=tmp_path,
                  kernel=tmp_path / "vmlinuz", initrd=tmp_path / "i", modules=tmp_path,
                  manifest={}, kernel_release="6.12.95+deb12-arm64")
    assert _image_facts(image) == {"LINUX_VERSION_CODE": 0x060C5F}
    (tmp_path / "config").write_text("CONFIG_ARM64_VA_BITS=52\n")
    assert _image_facts(image)["CONFIG_ARM64_VA_BITS"] == 52


def test_the_612_recipes_are_their_base_with_another_kernel() -> None:
    """Everything but the name and the kernel's suite is the 6.1 recipe's (the workload's
    sources, the modules, the required options), so a change there reaches both."""
    from dataclasses import replace
    for base in ("linux-amd64", "linux-arm64"):
        old, new = load_recipe(base), load_recipe(f"{base}-6.12")
        assert replace(new, name=old.name, kernel=old.kernel) == old
        assert replace(new.kernel, suite=None) == old.kernel
