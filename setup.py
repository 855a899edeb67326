"""What pyproject.toml cannot say: the committed reference results ship inside the package.

results/ (each experiment's full-mode output: JSON, Markdown tables, PNG figures) is installed as
kdteach/_references/, so a pip, wheel or Colab install shows the same references as a clone; kdteach.results reads
a clone's results/ first and the installed copy otherwise. The folder stays results/ in the repository. The other
packages are found, so a new subpackage of kdteach/ needs no entry here. Everything else is in pyproject.toml.
"""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["kdteach", "kdteach.*"]) + ["kdteach._references"],
    package_dir={"kdteach._references": "results"},
    # kdteach's own data files (paper_claims.json) too: without a MANIFEST they would be left out of the wheel.
    package_data={"kdteach": ["*.json"], "kdteach._references": ["*.md", "*/*.json", "*/*.md", "*/*.png"]},
)
