from pathlib import Path

from setuptools import find_packages, setup

SUITE_DEPS = [
    "pytest>=8",
    "pytest-benchmark>=4",
    "pytest-redis>=3",
    "pytest-timeout>=2",
    "hypothesis>=6",
    "matplotlib>=3.7",
    "trustme>=1.1",  # throwaway CA and certificates for the TLS tests
]

setup(
    name="fmredis",
    version="0.1.0",
    description="A synchronous, thread-safe Redis session store with minimal per-operation overhead",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["fmredis", "fmredis.*"]),
    package_data={"fmredis": ["py.typed"]},
    python_requires=">=3.10",
    install_requires=[
        "redis[hiredis]>=7.4",
        "orjson>=3.9",
        "attrs>=23.1",
    ],
    extras_require={
        # One list for both: the benchmarks also run (once each, untimed) inside the test suite.
        "test": SUITE_DEPS,
        "bench": SUITE_DEPS,
        "lint": ["ruff>=0.5"],
        "type": ["mypy>=1.10"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Typing :: Typed",
    ],
)
