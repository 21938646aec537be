"""Fixtures the adversary tests share with the API tier: a real node served over mTLS."""

from tests.api.conftest import node_dir, serve_with

__all__ = ["node_dir", "serve_with"]
