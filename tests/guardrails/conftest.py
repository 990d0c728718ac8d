"""Fixtures of the guardrail tests: serdes, worker subprocesses that never outlive a test, and
the private Postfix (with its receiver and a per-test MTA agent) of the provider tests."""

from tests.pipeline.conftest import serdes, workers
from tests.providers.conftest import agent, mta, receiver_up, smtp_settings

__all__ = ["agent", "mta", "receiver_up", "serdes", "smtp_settings", "workers"]
