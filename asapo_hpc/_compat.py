"""What differs between the Python versions we support (3.10 and later)."""

try:
    import tomllib  # Python >= 3.11
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

__all__ = ["tomllib"]
