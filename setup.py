"""Builds the C core (csrc/) into fotadelta._core through Cython; metadata is in pyproject.toml."""

import os
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

CSRC = sorted(str(p) for p in Path("csrc").glob("*.c"))

POSIX = os.name == "posix"

core = Extension(
    "fotadelta._core",
    sources=["src/fotadelta/_core.pyx", *CSRC],
    include_dirs=["csrc"],
    # Large diffs build their two suffix arrays and scan their two halves on two threads; the
    # emulated devices' flash hashes images with OpenSSL (fd_inplace.h, FD_IP_FLASH_DIGEST).
    define_macros=[("FD_IP_FLASH_DIGEST", "1"), *([("FD_HAVE_PTHREADS", "1")] if POSIX else [])],
    extra_compile_args=["-O3", "-pthread"] if POSIX else [],
    extra_link_args=["-pthread"] if POSIX else [],
    # liblzma (Debian: liblzma-dev): referenced LZMA patches need its preset dictionaries, which
    # Python's lzma module does not expose.
    libraries=["lzma"],
)

# Build products go to .build/, not build/: a build/ folder in the project root would be imported
# instead of the `build` package by `python -m build` when that is not installed.
setup(ext_modules=cythonize([core], compiler_directives={"language_level": "3"}),
      options={"build": {"build_base": ".build"}})
