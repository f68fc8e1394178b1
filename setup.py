import re
from pathlib import Path

from setuptools import find_packages, setup

# The version is written once, in the package; read as text, since importing fmredis needs its dependencies.
_INIT = Path(__file__).with_name("fmredis") / "__init__.py"
_VERSION = re.search(r"^__version__ = [\"']([^\"']+)[\"']$", _INIT.read_text(encoding="utf-8"), flags=re.MULTILINE)
if _VERSION is None:
    raise RuntimeError(f'no __version__ = "..." line in {_INIT}')

SUITE_DEPS = [
    "pytest>=8",
    "pytest-benchmark>=4",
    "pytest-redis>=3",
    "pytest-timeout>=2",
    "hypothesis>=6",
    "matplotlib>=3.7",
    "trustme>=1.1",  # throwaway CA and certificates for the TLS tests
    # The framework integrations (fmredis.contrib), their tests and the web load test (which compares Flask-Session).
    "django>=4.2",
    "flask>=2.3",
    "Flask-Session>=0.8",
    "waitress>=3",
    "python-redis-lock>=4",  # the lock benchmark's peer (benchmarks/lock.py)
    "zstandard>=0.22",  # ContextCache's compression (the zstd extra)
    "lz4>=4",  # the codec the context-cache benchmark measures zstandard against
]

setup(
    name="fmredis",
    version=_VERSION.group(1),
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
        # The framework integrations: SESSION_ENGINE = "fmredis.contrib.django", fmredis.contrib.flask.
        "django": ["django>=4.2"],
        "flask": ["flask>=2.3"],
        # ContextCache's default compression (compression="zstd"); without it, build the cache with compression=None.
        "zstd": ["zstandard>=0.22"],
        "lint": ["ruff>=0.5"],
        "type": ["mypy>=1.10"],
    },
    entry_points={"console_scripts": ["fmredis = fmredis.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Typing :: Typed",
    ],
)
