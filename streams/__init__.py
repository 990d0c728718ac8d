"""estop: halt a campaign mid-send on every channel and account for every halted message."""

__version__ = "0.1.0"
