"""Package discovery under the ``orthonav`` namespace (metadata lives in pyproject.toml).

The code folders sit at the repository root (``planning/`` imports as ``orthonav.planning``);
setuptools' ``find_packages`` is run inside each so a sub-package (``planning/tka/``) needs no
entry anywhere. There is no root folder named ``orthonav/``: it would shadow the installed package.
"""

from setuptools import find_packages, setup

ROOTS = ("core", "segmentation", "planning", "tracking", "navigation", "phantoms", "cli")

packages = []
for root in ROOTS:
    packages.append(f"orthonav.{root}")
    packages += [f"orthonav.{root}.{sub}" for sub in find_packages(where=root)]

setup(packages=packages, package_dir={f"orthonav.{root}": root for root in ROOTS})
