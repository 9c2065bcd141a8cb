"""pkrelay: PluralKit webhooks and API polling turned into one signed event stream."""

from importlib.metadata import PackageNotFoundError, version

try:  # pyproject.toml's version is the one source; the installed metadata carries it
    __version__ = version("pkrelay")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
