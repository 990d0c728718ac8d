"""``python -m streams`` is the ``estop`` command (used to start worker subprocesses)."""

from streams.cli import main

main()
