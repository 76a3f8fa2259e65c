"""cpcl-plugin: weakly supervised text-based person retrieval (CPCL) as a FastReID plugin.

FastReID itself is installed separately, without its dependencies, because its metadata pins
torch 1.13.1:  pip install --no-deps fastreid==1.4.0   (`make install` does both).
"""
from setuptools import find_packages, setup

setup(
    name="cpcl-plugin",
    version="0.1.0",
    description="CPCL (Cross-modal Prototypical Contrastive Learning) for weakly supervised "
                "text-based person retrieval, as a FastReID plugin",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["cpcl_plugin", "cpcl_plugin.*"]),
    package_data={"cpcl_plugin.modeling": ["model_configs/*.json"]},
    install_requires=[
        "torch>=2.1",
        "torchvision",
        "open_clip_torch>=2.20",
        "yacs>=0.1.8",
        "filelock",  # one pretraining per cached weight file (engine/pretraining.py)
        "tabulate",
        "faiss-cpu>=1.7.3",
        # FastReID 1.4.0's own runtime needs (it is installed with --no-deps).
        "opencv-python-headless",
        "scikit-learn",
        "scipy",
        "tensorboard",
        "termcolor",
        "numpy",
        "pillow>=10.1",  # Image.has_transparency_data, ImageFont.load_default(size)
    ],
    extras_require={
        "gpu": ["faiss-gpu"],
        "test": ["pytest>=7", "pytest-xdist>=3"],  # make test: two workers (filelock: above)
        "bench": ["matplotlib"],  # plots of `make bench`
    },
)
