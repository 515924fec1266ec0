"""Packaging glue that pyproject.toml cannot express on its own.

The shipped populations live in the top-level ``envs/`` folder (data, not code) and are installed
as the package ``rlhf_persona.envs`` (``package-dir`` in pyproject.toml), so a non-editable
install resolves ``load_population("four_segments")`` too. setuptools cannot combine automatic
package discovery with one extra mapped package in pyproject.toml alone, hence this list.
"""

from setuptools import find_namespace_packages, setup

# Namespace discovery, as pyproject.toml's own `packages.find` default does.
setup(packages=[*find_namespace_packages(include=["rlhf_persona*"]), "rlhf_persona.envs"])
