"""Helpers the tests share (imported as ``tests.support.*``; no test module imports another)."""
