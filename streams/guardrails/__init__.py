"""Guardrails: a campaign that goes wrong stops itself. Feedback after a handoff (``feedback``),
rules per campaign with defaults for all (``rules``), and the processor that counts outcomes and
feedback against them and writes one real stop when a rule trips (``processor``)."""
