"""Packages: the harness, and the image recipes and workload sources of images/ as data.

The recipes live at the top of the checkout (images/); an installed slatcheck carries
them as the package ``harness.recipes`` (see harness.images.recipe.IMAGES_DIR).
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["harness", "harness.*"]), "harness.recipes",
              "harness.recipes.workload"],
    package_dir={"harness.recipes": "images", "harness.recipes.workload": "images/workload"},
    package_data={"harness": ["py.typed"], "harness.scenario": ["*.json"],
                  "harness.recipes": ["*/*.yaml", "*/*.sh", "*/*.conf"],
                  "harness.recipes.workload": ["*.c", "*.h"]},
)
