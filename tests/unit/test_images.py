"""harness.images without network: recipes, module closure, cpio, cache key, apt options."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.errors import InfraError, RegistryLookupError
from harness.images import IMAGES, build_image, image_hash, kmod, load_recipe, parse_recipe
from harness.images import apt as apt_mod
from harness.images import build as build_mod
from harness.images.cpio import CpioWriter
from harness.images.host import require_tool
from harness.images.initramfs import InitramfsContents, build_initramfs, init_script

ARM64_RECIPE = """
name: linux-arm64
arch: aarch64
apt_architecture: arm64
kernel: {metapackage: linux-image-arm64, image: "boot/vmlinuz-{release}"}
packages: [busybox-static]
modules: []
workload:
  cc: aarch64-linux-gnu-gcc
  cc_packages: [gcc-aarch64-linux-gnu, libc6-dev-arm64-cross]
  sources: [main.c, arch_arm64.c]
console: ttyAMA0
append: console=ttyAMA0 panic=-1
"""



# ---- recipes -----------------------------------------------------------------

def test_linux_amd64_recipe() -> None:
    recipe = load_recipe("linux-amd64")
    assert recipe.arch == "x86_64" and recipe.apt_architecture == "amd64"
    assert recipe.kernel.metapackage == "linux-image-amd64" and recipe.kernel.package is None
    assert [(m.name, m.params) for m in recipe.modules] == [("kvm_amd", "nested=1 npt=1")]
    assert "busybox-static" in recipe.packages
    assert "console=ttyS0" in recipe.append and recipe.console == "ttyS0"
    for src in recipe.workload.sources:
        assert (recipe.path.parents[1] / "workload" / src).is_file()


def test_unknown_image_lists_the_valid_ones() -> None:
    with pytest.raises(RegistryLookupError) as info:
        build_image("linux-vax", progress=lambda s: None)
    assert "linux-amd64" in str(info.value)
    assert "linux-amd64" in IMAGES.names()


def test_an_arm64_recipe_is_data_only() -> None:
    recipe = parse_recipe(ARM64_RECIPE)
    assert recipe.modules == () and recipe.apt_architecture == "arm64"
    assert recipe.workload.cc == "aarch64-linux-gnu-gcc"
    assert recipe.prompt == "slat# "


@pytest.mark.parametrize("drop", ["name", "kernel", "workload", "console", "append"])
def test_recipe_missing_key(drop: str) -> None:
    lines = [ln for ln in ARM64_RECIPE.splitlines() if not ln.startswith(f"{drop}:")]
    if drop == "workload":
        lines = [ln for ln in lines if not ln.startswith("  ")]
    with pytest.raises(InfraError, match=drop):
        parse_recipe("\n".join(lines), "r.yaml")


def test_init_script_loads_the_recipes_modules() -> None:
    script = init_script(load_recipe("linux-amd64"))
    assert script.startswith("#!/bin/busybox sh\n")
    assert "modprobe kvm_amd nested=1 npt=1" in script
    assert "mount -t devtmpfs" in script and "PS1='slat# '" in script
    assert script.index("modprobe") > script.index("mount -t sysfs")


# ---- kernel modules ----------------------------------------------------------

def test_modules_dep_of_the_decompressed_modules() -> None:
    deps = kmod.parse_modules_dep(
        "kernel/arch/x86/kvm/kvm-amd.ko.xz: kernel/arch/x86/kvm/kvm.ko.xz "
        "kernel/drivers/crypto/ccp/ccp.ko.xz kernel/virt/lib/irqbypass.ko.xz\n"
        "kernel/arch/x86/kvm/kvm.ko.xz: kernel/virt/lib/irqbypass.ko.xz\n"
        "kernel/drivers/crypto/ccp/ccp.ko.xz:\nkernel/virt/lib/irqbypass.ko.xz:\n")
    order = kmod.load_order(deps, ["kvm_amd"])
    assert [kmod.module_name(p) for p in order] == ["irqbypass", "ccp", "kvm", "kvm_amd"]
    lines = dict(ln.split(":", 1) for ln in kmod.modules_dep(deps, order).splitlines())
    assert lines["kernel/arch/x86/kvm/kvm-amd.ko"].split() == [
        "kernel/arch/x86/kvm/kvm.ko", "kernel/drivers/crypto/ccp/ccp.ko",
        "kernel/virt/lib/irqbypass.ko"]
    assert lines["kernel/virt/lib/irqbypass.ko"].strip() == ""


def test_module_names_of_every_suffix() -> None:
    for name in ("kvm-amd.ko", "kvm-amd.ko.xz", "kvm-amd.ko.zst"):
        assert kmod.module_name(f"kernel/{name}") == "kvm_amd"
        assert kmod.plain_name(Path(name)) == Path("kvm-amd.ko")


def test_corrupt_compressed_module_raises(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ko.xz"
    bad.write_bytes(b"not xz")
    with pytest.raises(InfraError, match="bad.ko.xz"):
        kmod.module_elf(bad)


# ---- initramfs ---------------------------------------------------------------

def test_initramfs_unpacks_with_the_cpio_tool(tmp_path: Path) -> None:
    if shutil.which("cpio") is None:
        pytest.skip("cpio not installed")
    contents = InitramfsContents(
        busybox=b"BUSYBOX", workload=b"WORKLOAD", kernel_release="6.1.0-9-amd64",
        modules={"kernel/arch/x86/kvm/kvm.ko": b"KVM"},
        modules_dep="kernel/arch/x86/kvm/kvm.ko:\n")
    archive = tmp_path / "initramfs.cpio.gz"
    build_initramfs(load_recipe("linux-amd64"), contents, archive)
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(["cpio", "-id", "--quiet", "--no-absolute-filenames"], cwd=root,
                   input=gzip.decompress(archive.read_bytes()), check=True)
    assert (root / "bin/busybox").read_bytes() == b"BUSYBOX"
    assert (root / "bin/slat-workload").read_bytes() == b"WORKLOAD"
    assert (root / "init").stat().st_mode & 0o111
    assert (root / "bin/sh").is_symlink() and str((root / "bin/sh").readlink()) == "busybox"
    mods = root / "lib/modules/6.1.0-9-amd64"
    assert (mods / "kernel/arch/x86/kvm/kvm.ko").read_bytes() == b"KVM"
    assert (mods / "modules.dep").read_text().startswith("kernel/arch/x86/kvm/kvm.ko:")


def test_cpio_rejects_duplicates_and_pads() -> None:
    archive = CpioWriter()
    archive.file("a", b"xyz")
    with pytest.raises(ValueError):
        archive.file("a", b"")
    data = archive.finish()
    assert len(data) % 4 == 0 and data.startswith(b"070701") and b"TRAILER!!!" in data


# ---- cache -------------------------------------------------------------------

def _hash_inputs(tmp_path: Path) -> tuple[Path, Path, Path]:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(ARM64_RECIPE)
    workload, builder = tmp_path / "wl", tmp_path / "builder"
    workload.mkdir()
    builder.mkdir()
    (workload / "main.c").write_text("int main(void) { return 0; }\n")
    (builder / "build.py").write_text("# v1\n")
    return recipe, workload, builder


@pytest.mark.parametrize("edit", ["recipe", "workload", "builder", "new_source"])
def test_cache_key_covers_every_input(tmp_path: Path, edit: str) -> None:
    recipe, workload, builder = _hash_inputs(tmp_path)
    before = image_hash(recipe, workload, builder)
    assert image_hash(recipe, workload, builder) == before
    target = {"recipe": recipe, "workload": workload / "main.c",
              "builder": builder / "build.py", "new_source": workload / "arch_x86.c"}[edit]
    target.write_text(target.read_text() + "\n" if target.exists() else "x\n")
    assert image_hash(recipe, workload, builder) != before


def test_cached_image_is_reused_without_network(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = load_recipe("linux-amd64")
    final = build_mod.cache_root(tmp_path) / f"linux-amd64-{image_hash(recipe.path)}"
    (final / "modules").mkdir(parents=True)
    (final / "manifest.json").write_text(json.dumps({"kernel_release": "6.1.0-9-amd64"}))

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached image must not fetch anything")

    monkeypatch.setattr(build_mod, "_assemble", no_network)
    lines: list[str] = []
    image = build_image("linux-amd64", progress=lines.append, cache_dir=tmp_path)
    assert image.dir == final and image.kernel == final / "vmlinuz"
    assert image.kernel_release == "6.1.0-9-amd64" and image.arch == "x86_64"
    assert image.append == recipe.append and any("cached" in ln for ln in lines)


def test_cache_dir_follows_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert build_mod.cache_root() == tmp_path / "slatcheck" / "images"


# ---- host tools and apt ------------------------------------------------------

def test_missing_tool_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    with pytest.raises(InfraError, match="apt-get install dpkg"):
        require_tool("dpkg-deb")
    with pytest.raises(InfraError, match="apt-get install gcc-aarch64-linux-gnu"):
        require_tool("aarch64-linux-gnu-gcc")


def test_depends_of_the_metapackage() -> None:
    shown = ("Package: linux-image-amd64\nVersion: 6.1.192-2\n"
             "Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)\n")
    assert apt_mod.parse_depends(shown) == ["linux-image-6.1.0-56-amd64"]
    assert apt_mod.parse_depends("Package: x\n") == []


def _fake_apt(monkeypatch: pytest.MonkeyPatch, known: set[str]) -> list[list[str]]:
    calls: list[list[str]] = []

    def run_tool(argv: list[str], cwd: Path | None = None, packages: object = ()) -> str:
        calls.append(list(argv))
        if argv[0] == "dpkg":
            return "amd64\n"
        if argv[0] == "apt-cache":
            if argv[-1] not in known:
                raise InfraError("unknown")
            return "Depends: linux-image-6.1.0-9-arm64 (= 6.1.1-1)\n"
        return ""

    monkeypatch.setattr(apt_mod, "run_tool", run_tool)
    return calls


def test_foreign_architecture_gets_private_apt_state(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_apt(monkeypatch, {"linux-image-arm64", "linux-image-6.1.0-9-arm64-unsigned"})
    ctx = apt_mod.AptContext("arm64", tmp_path / "apt-arm64")
    assert "-oAPT::Architecture=arm64" in ctx.options
    assert any(o.startswith("-oDir::State::Lists=") for o in ctx.options)
    assert [c for c in calls if c[0] == "apt-get"][0][-1] == "update"
    spec = parse_recipe(ARM64_RECIPE).kernel
    assert ctx.resolve_kernel(spec) == "linux-image-6.1.0-9-arm64-unsigned"
    assert all(c[1:1 + len(ctx.options)] == ctx.options for c in calls if c[0] == "apt-cache")


def test_signed_kernel_when_no_unsigned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_apt(monkeypatch, {"linux-image-arm64"})
    ctx = apt_mod.AptContext("amd64", tmp_path)
    assert ctx.options == []
    spec = parse_recipe(ARM64_RECIPE).kernel
    assert ctx.resolve_kernel(spec) == "linux-image-6.1.0-9-arm64"


def test_pinned_kernel_skips_the_metapackage(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_apt(monkeypatch, set())
    pinned = parse_recipe(ARM64_RECIPE.replace(
        "kernel: {metapackage: linux-image-arm64,",
        "kernel: {metapackage: linux-image-arm64, package: linux-image-x, version: '1.2',"))
    ctx = apt_mod.AptContext("amd64", tmp_path)
    assert ctx.resolve_kernel(pinned.kernel) == "linux-image-x=1.2"
    assert not [c for c in calls if c[0] == "apt-cache"]


def test_linux_arm64_recipe() -> None:
    recipe = load_recipe("linux-arm64")
    assert recipe.arch == "aarch64" and recipe.apt_architecture == "arm64"
    assert recipe.modules == () and recipe.console == "ttyAMA0"
    assert "arch_arm64.c" in recipe.workload.sources
    assert (recipe.path.parents[1] / "workload" / "arch_arm64.c").is_file()


def test_concurrent_builds_assemble_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two builders of one image: one assembles, the other waits and reuses its result."""
    import threading
    import time

    calls: list[Path] = []

    def fake_assemble(recipe: object, root: Path, work: Path, out: Path,
                      progress: object, files: object) -> dict[str, object]:
        calls.append(out)
        time.sleep(0.2)   # hold the lock long enough for the other builder to queue
        for name in ("vmlinuz", "initramfs.cpio.gz", "slat-workload"):
            (out / name).write_bytes(name.encode())
        (out / "modules").mkdir()
        return {"packages": [], "kernel_release": "6.1.0-9-amd64", "modules": []}

    monkeypatch.setattr(build_mod, "_assemble", fake_assemble)
    images: list[object] = []
    threads = [threading.Thread(target=lambda: images.append(
        build_image("linux-amd64", progress=lambda s: None, cache_dir=tmp_path)))
        for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(images) == 2
    first, second = images
    assert first.dir == second.dir and (first.dir / "vmlinuz").read_bytes() == b"vmlinuz"
    leftovers = [p.name for p in first.dir.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    manifest = json.loads((first.dir / "manifest.json").read_text())
    assert set(manifest["files"]) == {"vmlinuz", "initramfs.cpio.gz", "slat-workload"}


def test_a_five_level_machine_boots_the_packaged_bzimage(tmp_path: Path) -> None:
    """Linux's PVH entry starts in 4-level paging: an LA57 machine (``-cpu max``) gets the
    bzImage, whose decompressor switches to 5 levels; other machines get vmlinux."""
    from harness.arch import x86_la57
    from harness.images.build import Image
    from harness.machines.base import KernelBoot
    image = Image(name="linux-amd64", arch="x86_64", dir=tmp_path, kernel=tmp_path / "vmlinux",
                  initrd=tmp_path / "i", modules=tmp_path, manifest={"entry": "pvh"},
                  append="console=ttyS0", packaged=tmp_path / "vmlinuz")
    for cpu, kernel in (("max,-la57", "vmlinux"), ("max,phys-bits=52", "vmlinuz")):
        spec = image.boot_spec("quiet", x86_la57(cpu))
        assert isinstance(spec, KernelBoot) and spec.kernel.name == kernel
        assert spec.append == "console=ttyS0 quiet"
    no_pvh = Image(name="x", arch="x86_64", dir=tmp_path, kernel=tmp_path / "vmlinuz",
                   initrd=tmp_path / "i", modules=tmp_path, manifest={})
    spec = no_pvh.boot_spec("", five_level=True)
    assert isinstance(spec, KernelBoot) and spec.kernel.name == "vmlinuz"
