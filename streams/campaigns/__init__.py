"""Campaigns: lifecycle on ``campaign-status``, the launcher (campaign engine stand-in), status."""
