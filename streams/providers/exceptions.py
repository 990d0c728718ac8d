"""Provider errors: a provider the settings name that estop cannot use."""

from streams.exceptions import EstopError


class ProviderError(EstopError):
    """Base of the provider area's errors."""


class ProviderConfigError(ProviderError):
    """A provider URL in the settings is malformed or names an unknown kind of provider."""

    exit_code = 2


class ProviderUnavailableError(ProviderError):
    """The provider the settings name does not answer (a worker cannot start without it)."""


class FramingError(ProviderError):
    """An SMPP peer sent bytes that are not a PDU (a length out of range)."""
