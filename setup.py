"""Builds plantops' compiled kernels.

- ``plantops._C``: the C++ CPU kernels (always; OpenMP).
- ``plantops._cuda``: the CUDA kernels, when a CUDA toolkit is found (``CUDA_HOME``,
  ``CUDA_PATH``, ``/usr/local/cuda`` or ``nvcc`` on ``PATH``); otherwise skipped with a
  one-line notice. Built for an explicit list of architectures, never for the build
  machine's GPU (nothing here queries a GPU), with the CUDA runtime linked statically.

Environment variables:
- ``PLANTOPS_CUDA_ARCHS``: semicolon-separated SM versions (default ``80;86;89;90``).
- ``PLANTOPS_NO_CUDA=1``: skip the CUDA kernels even where a toolkit is found.
- ``PLANTOPS_CPU_FLAGS``: extra compiler flags for the CPU kernels (default ``-march=native``,
  since the kernels are built on the machine that runs them; set it empty for a portable build).
"""

import glob
import os
import shlex
import shutil
import subprocess
import sys

from pybind11.setup_helpers import Pybind11Extension
from setuptools import setup
from setuptools.command.build_ext import build_ext

DEFAULT_CUDA_ARCHS = "80;86;89;90"


def find_cuda_home():
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return home
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda"
    nvcc = shutil.which("nvcc")
    if nvcc:
        return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    return None


def cuda_lib_dir(home):
    for sub in ("lib64", "lib", os.path.join("targets", "x86_64-linux", "lib")):
        if os.path.exists(os.path.join(home, sub, "libcudart_static.a")):
            return os.path.join(home, sub)
    return os.path.join(home, "lib64")


def nvcc_gencode_flags():
    archs = os.environ.get("PLANTOPS_CUDA_ARCHS", DEFAULT_CUDA_ARCHS)
    flags = []
    for arch in filter(None, (a.strip() for a in archs.replace(",", ";").split(";"))):
        arch = arch.replace("sm_", "").replace(".", "")
        flags.append(f"-gencode=arch=compute_{arch},code=sm_{arch}")
    # PTX for the newest listed architecture, so newer GPUs can JIT it.
    if flags:
        newest = flags[-1].split("compute_")[1].split(",")[0]
        flags.append(f"-gencode=arch=compute_{newest},code=compute_{newest}")
    return flags


class BuildExt(build_ext):
    """build_ext that compiles ``.cu`` sources with nvcc and links them into the extension."""

    def build_extension(self, ext):
        cu_sources = [s for s in ext.sources if s.endswith(".cu")]
        if cu_sources:
            ext.sources = [s for s in ext.sources if not s.endswith(".cu")]
            ext.extra_objects = list(ext.extra_objects or []) + self._nvcc(ext, cu_sources)
        super().build_extension(ext)

    def _nvcc(self, ext, sources):
        home = find_cuda_home()
        nvcc = os.path.join(home, "bin", "nvcc")
        objects = []
        os.makedirs(self.build_temp, exist_ok=True)
        for src in sources:
            obj = os.path.join(self.build_temp, os.path.basename(src) + ".o")
            cmd = [nvcc, "-c", src, "-o", obj, "-O3", "-std=c++17", "-Xcompiler", "-fPIC",
                   "-Icsrc", *nvcc_gencode_flags()]
            print(" ".join(shlex.quote(c) for c in cmd), flush=True)
            subprocess.check_call(cmd)
            objects.append(obj)
        return objects


cpu_flags = shlex.split(os.environ.get("PLANTOPS_CPU_FLAGS", "-march=native"))
# Headers: an edit to one rebuilds the extensions (setuptools tracks only the sources).
headers = sorted(glob.glob("csrc/*.h"))
extensions = [
    Pybind11Extension(
        "plantops._C",
        ["csrc/bindings_cpu.cpp", "csrc/planted_conv_cpu.cpp", "csrc/winograd_cpu.cpp",
         "csrc/winograd_planted_inputs.cpp", "csrc/relu_pool_cpu.cpp", "csrc/geometry.cpp"],
        include_dirs=["csrc"],
        depends=headers,
        cxx_std=17,
        extra_compile_args=["-O3", "-fopenmp", *cpu_flags],
        extra_link_args=["-fopenmp"],
    )
]

cuda_home = None if os.environ.get("PLANTOPS_NO_CUDA") == "1" else find_cuda_home()
if cuda_home:
    extensions.append(
        Pybind11Extension(
            "plantops._cuda",
            ["csrc/bindings_cuda.cpp", "csrc/planted_conv_cuda.cu", "csrc/geometry.cpp"],
            include_dirs=["csrc", os.path.join(cuda_home, "include")],
            depends=headers,
            cxx_std=17,
            extra_compile_args=["-O3"],
            library_dirs=[cuda_lib_dir(cuda_home)],
            # Static runtime: the module needs only the driver at run time, not a toolkit.
            libraries=["cudart_static", "dl", "rt", "pthread"],
        )
    )
else:
    reason = "PLANTOPS_NO_CUDA=1" if os.environ.get("PLANTOPS_NO_CUDA") == "1" else "no CUDA toolkit found"
    print(f"plantops: building without the CUDA kernels ({reason})", file=sys.stderr)

setup(ext_modules=extensions, cmdclass={"build_ext": BuildExt})
