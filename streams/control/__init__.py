"""Campaign control: the in-memory view of ``campaign-control``, its feed, and the stop command."""
