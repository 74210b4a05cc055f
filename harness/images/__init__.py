"""The embedded L1 images: recipes under ``images/<name>/`` built into the user's cache.

>>> from harness.images import IMAGES
>>> "linux-amd64" in IMAGES
True
"""

from __future__ import annotations

from harness.images.build import BUILDER_VERSION, Image, cache_root, image_hash
from harness.images.builders import IMAGE_BUILDERS, IMPORT_CHECKS, ImageBuilder, build_image
from harness.images.recipe import (
    IMAGES,
    ImageFacts,
    Recipe,
    image_facts,
    load_recipe,
    parse_recipe,
)

__all__ = [
    "BUILDER_VERSION",
    "IMAGES",
    "IMAGE_BUILDERS",
    "IMPORT_CHECKS",
    "ImageBuilder",
    "Image",
    "ImageFacts",
    "image_facts",
    "Recipe",
    "build_image",
    "cache_root",
    "image_hash",
    "load_recipe",
    "parse_recipe",
]
