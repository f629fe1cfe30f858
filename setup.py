"""arjax: autoregressive generative modelling in JAX/Flax (see README.md)."""
import setuptools

# Version ranges the test-suite passes with (CPU: jax 0.10.x on Python 3.11; GPU hosts: jax 0.11).
INSTALL_REQUIRES = [
    "jax>=0.8,<0.12",
    "flax>=0.12,<0.14",
    "optax>=0.2.5,<0.3",
    "chex>=0.1.86,<0.2",
    "orbax-checkpoint>=0.11,<0.13",
    "grain>=0.2.12,<0.3",
    "ml-collections>=1.0,<2",
    "clu>=0.0.12,<0.1",
    "numpy>=1.26,<3",
    "scipy>=1.11,<2",
    "pillow>=10,<14",
    "matplotlib>=3.8,<4",
    "tqdm>=4.66,<5",
    "tensorboardX>=2.6,<3",
    "absl-py>=2.1,<3",
    "aiohttp>=3.9,<4",
]

setuptools.setup(
    name="arjax",
    version="0.1.0",
    description="Autoregressive image generation in JAX/Flax: raster, random-order, parallel and "
                "masked generation of discrete tokens, tokenizers and a shared trainer.",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["arjax", "arjax.*"]),
    package_data={"arjax.data": ["bundled/*/*"], "arjax.evaluate": ["weights/*"]},
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "test": ["pytest>=8,<10", "nbclient>=0.10,<0.12", "nbformat>=5.10,<6", "ipykernel>=6.29,<8"],
        "tfds": ["tensorflow-datasets>=4.9,<5"],
    },
)
