"""Fixtures of the guardrail tests: serdes and worker subprocesses that never outlive a test."""

from tests.pipeline.conftest import serdes, workers

__all__ = ["serdes", "workers"]
