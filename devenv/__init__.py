"""devenv: the same Linux container environment on Windows, macOS and Linux."""

__version__ = "0.1.0"
