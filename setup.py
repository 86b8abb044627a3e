"""Map the top-level folders onto the ``ftlct`` namespace.

The product's folders are ``agent/ cloud/ export/ protocol/ bench/``; installed,
they import as ``ftlct.agent`` and so on, so that installing ftl-ct never
shadows the unrelated PyPI packages named ``agent``, ``cloud`` or ``export``.
Sub-packages are discovered here so that a new folder needs no edit.
"""

from setuptools import find_packages, setup

PARTS = ("agent", "cloud", "export", "protocol", "bench")

packages = []
package_dir = {}
for part in PARTS:
    packages.append(f"ftlct.{part}")
    package_dir[f"ftlct.{part}"] = part
    packages += [f"ftlct.{part}.{sub}" for sub in find_packages(part)]

# Files besides the modules that a part reads at run time (through importlib.resources).
package_data = {"ftlct.cloud.dashboard": ["*.css"]}

setup(packages=packages, package_dir=package_dir, package_data=package_data)
