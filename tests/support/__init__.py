"""Helpers shared by the test suite (real broker fixture, JPEG makers)."""
