"""Test doubles shipped with devenv, for orchestration unit tests only.

Real backends are tested against real hypervisors; this one lets the lifecycle,
CLI and error paths be tested fast and without one.
"""

from devenv.testing.fake import FakeBackend, FakeHost, use_fake_backend

__all__ = ["FakeBackend", "FakeHost", "use_fake_backend"]
