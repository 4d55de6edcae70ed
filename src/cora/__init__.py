"""cora: collaborative information carried in an LLM recommender's weights (CoRA, AAAI 2025)."""

from importlib.metadata import PackageNotFoundError, version

# The distribution is `cora-rec` (`cora` on PyPI is another project). The version is read from
# the installed metadata so pyproject.toml stays its only source.
DISTRIBUTION = "cora-rec"
try:
    __version__ = version(DISTRIBUTION)
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"
