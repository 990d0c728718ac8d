"""The gate (stage ``sending``)."""
