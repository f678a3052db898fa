"""Packages are found, not listed; the one addition maps the top-level python_backends/ folder into
the package (as coded_serving.python_backends) so an installed wheel carries the backends."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["coded_serving*"]) + ["coded_serving.python_backends"],
    package_dir={"coded_serving.python_backends": "python_backends"},
    package_data={"coded_serving.python_backends": ["*/model.py"], "coded_serving.scheduler": ["*.cc", "*.h"]},
)
