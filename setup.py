"""pscv-dist: point-supervised contrastive-variance segmentation, distributed.

Install with the verified pins (torch must be requested in the same pip command as the rest, or pip
pulls a multi-GB CUDA build):  ``pip install -c constraints.txt -e ".[test]"``
"""
from setuptools import find_packages, setup

CORE = [
    "torch==2.13.0",
    "numpy==2.4.6",
    "scipy==1.17.1",
    "zarr==3.1.6",
    "numcodecs==0.16.6",
    "fsspec==2026.9.0",
    "nibabel==5.4.2",
    "h5py==3.16.0",
    "PyYAML==6.0.4",
    "tqdm==4.70.1",
    "matplotlib==3.11.2",
    "kornia==0.9.0",
    "mlflow==3.17.2",
    "fastapi==0.165.0",  # pscv annotate (also an MLflow dependency)
    "uvicorn==0.54.0",
]
EXTRAS = {
    "deepspeed": ["deepspeed==0.19.8"],
    "dali": ["nvidia-dali-cuda130==2.4.0"],
    "tune": ["ray[tune]==2.60.0", "optuna==5.0.0"],
    "test": ["pytest==9.2.0", "selenium==4.51.0"],  # selenium: the annotation page in headless chromium
}
EXTRAS["all"] = sorted({req for reqs in EXTRAS.values() for req in reqs} | {"kubernetes-validate==1.37.0"})  # k8s manifest tests

setup(
    name="pscv-dist",
    version="0.1.0",
    description="Point-supervised contrastive variance (PSCV) medical segmentation, multi-node",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.12",
    packages=find_packages(include=["pscv_dist", "pscv_dist.*"]),
    package_data={"pscv_dist": ["configs/*.yaml", "annotate/static/*"]},
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["pscv=pscv_dist.cli:main"]},
)
