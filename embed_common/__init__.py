"""What every part of embed-cluster shares; imports nothing of ours (a leaf, like zguide's MDP.py)."""

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("embed-cluster")  # written once, in pyproject.toml
except PackageNotFoundError:  # run from a source tree that was never installed
    VERSION = "0+unknown"
