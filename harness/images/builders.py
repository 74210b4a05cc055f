"""Image builders by name: a recipe's ``builder:`` key picks how its image is made.

``debian-initramfs`` (the default) assembles a Linux L1 from Debian packages
(:mod:`harness.images.build`); ``openbsd-autoinstall`` installs OpenBSD from the
release's signed files into a cached disk (:mod:`harness.images.openbsd_builder`);
``freebsd-basic-ci`` customises FreeBSD's BASIC-CI disk image
(:mod:`harness.images.freebsd_builder`); ``dragonfly-live`` customises DragonFly's
live disk image, optionally with a user-built kernel
(:mod:`harness.images.dragonfly_builder`).
A builder takes the image name, a progress sink and the cache directory and returns
an :class:`~harness.images.build.Image`; one that cannot work here (no network, a
release not in the cache) raises :class:`~harness.errors.SkipScenario` with the
reason, so the scenario is skipped, not failed.

>>> IMAGE_BUILDERS.names()
['debian-initramfs', 'dragonfly-live', 'freebsd-basic-ci', 'openbsd-autoinstall']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness.images import build as debian
from harness.images import dragonfly_builder, freebsd_builder, openbsd_builder
from harness.images.build import Image
from harness.images.recipe import image_facts
from harness.registry import Registry

__all__ = ["ImageBuilder", "IMAGE_BUILDERS", "IMPORT_CHECKS", "build_image"]

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ImageBuilder:
    """How one kind of image is made."""

    name: str
    description: str
    build: Callable[[str, Progress, Path | None], Image]   # (name, progress, cache_dir)


IMAGE_BUILDERS: Registry[ImageBuilder] = Registry("image builder")
IMAGE_BUILDERS.add("debian-initramfs", ImageBuilder(
    "debian-initramfs", "Linux kernel and modules from Debian packages, busybox initramfs",
    lambda name, progress, cache: debian.build_image(name, progress, cache)))
IMAGE_BUILDERS.add("openbsd-autoinstall", ImageBuilder(
    "openbsd-autoinstall", "OpenBSD from the release's signed files: netboot autoinstall "
    "under QEMU's user network, first-boot customisation, cached disk",
    lambda name, progress, cache: openbsd_builder.build_openbsd_image(name, progress, cache)))
IMAGE_BUILDERS.add("freebsd-basic-ci", ImageBuilder(
    "freebsd-basic-ci", "FreeBSD's BASIC-CI raw disk image from the release's mirror, "
    "checked against its CHECKSUM.SHA256, customised at its first boot, cached disk",
    lambda name, progress, cache: freebsd_builder.build_freebsd_image(name, progress, cache)))
IMAGE_BUILDERS.add("dragonfly-live", ImageBuilder(
    "dragonfly-live", "DragonFly's live disk image from the mirror, checked against the "
    "recipe's SHA-256 pin and the published MD5, customised at its first boot (optionally "
    "with a user-built kernel), cached disk",
    lambda name, progress, cache: dragonfly_builder.build_dragonfly_image(name, progress,
                                                                          cache)))

# builders that make a disk a user may install elsewhere and import: the check the kernel
# given with it must pass (it has what the guest's observer needs)
IMPORT_CHECKS: dict[str, Callable[[bytes], None]] = {
    "openbsd-autoinstall": openbsd_builder.check_kernel,
    "freebsd-basic-ci": freebsd_builder.check_kernel,
    "dragonfly-live": dragonfly_builder.check_kernel}


def build_image(name: str, progress: Progress = print, cache_dir: Path | None = None) -> Image:
    """Build image *name* (or reuse the cached one) with its recipe's builder."""
    return IMAGE_BUILDERS[image_facts(name).builder].build(name, progress, cache_dir)
