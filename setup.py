"""Builds the C core (csrc/) into fotadelta._core through Cython; metadata is in pyproject.toml."""

from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

CSRC = sorted(str(p) for p in Path("csrc").glob("*.c"))

core = Extension(
    "fotadelta._core",
    sources=["src/fotadelta/_core.pyx", *CSRC],
    include_dirs=["csrc"],
    extra_compile_args=["-O3", "-fno-strict-aliasing"],
)

setup(ext_modules=cythonize([core], compiler_directives={"language_level": "3"}))
