"""ferjax: facial expression recognition on FER2013 in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="ferjax",
    version="0.1.0",
    description="Facial expression recognition (FER2013) in JAX/Flax: CNNs, CNN+HOG, spatial-transformer attention",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["ferjax", "ferjax.*", "experiments", "experiments.*"]),
    package_data={"ferjax": ["assets/*"]},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.4.30",
        "flax>=0.8.5",
        "optax>=0.2.3",
        "numpy>=1.24",
        "pandas>=2.0",
        "scikit-image>=0.22",
        "orbax-checkpoint>=0.6",
        "tensorboard>=2.15",
        "absl-py>=2.0",
        "pillow>=10.0",  # image decoding (also what scikit-image reads through)
        "matplotlib>=3.7",  # history, confusion-matrix and visualisation PNGs
    ],
    extras_require={
        "test": ["pytest>=8", "ruff==0.17.6"],
        "bench": ["torch==2.13.0"],
    },
)
