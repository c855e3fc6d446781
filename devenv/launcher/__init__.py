"""The native `devenv` front door (launcher.c) and how it is built.

On Linux and macOS, where a C compiler exists at install time, the `devenv`
command is a small C program: it serves a warm `devenv exec` itself (one
request to the host agent, ~1 ms instead of a Python start of ~15-20 ms) and
runs the Python CLI, installed as `devenv-py`, for everything else. Without a
compiler, on Windows, or with DEVENV_NATIVE_LAUNCHER=0 at install, `devenv` is
the Python CLI itself. Both behave the same; `devenv doctor` says which one
this install has.
"""
