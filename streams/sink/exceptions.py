"""Analytics errors."""

from streams.exceptions import EstopError, UsageError


class StoreError(EstopError):
    """The analytics store cannot be opened or written."""


class UnknownCampaignError(UsageError):
    """The analytics store knows nothing of this campaign."""
