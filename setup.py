"""Build the C core (shmdict/backends/shm/_core.c) as an extension module.

Everything else lives in pyproject.toml; this file exists only because
extension modules still need setup.py with setuptools.

SHMDICT_SANITIZE=1 builds the core with AddressSanitizer and
UndefinedBehaviorSanitizer (run Python with LD_PRELOAD=$(gcc
-print-file-name=libasan.so) to use it).
"""
import os
import platform

from setuptools import Extension, setup

compile_args = ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
                "-Wno-missing-field-initializers", "-Wno-cast-function-type"]
link_args = []
if platform.machine() in ("x86_64", "AMD64"):
    compile_args.append("-mcx16")  # inline the 16-byte compare-and-swap
if os.environ.get("SHMDICT_SANITIZE"):
    compile_args += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-O1", "-g"]
    link_args += ["-fsanitize=address,undefined"]

setup(
    ext_modules=[
        Extension(
            "shmdict.backends.shm._core",
            sources=["shmdict/backends/shm/_core.c"],
            depends=["shmdict/backends/shm/format.h"],
            extra_compile_args=compile_args,
            extra_link_args=link_args,
        )
    ]
)
