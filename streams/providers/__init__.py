"""Provider adapters, one per channel, chosen by settings (``ESTOP_EMAIL_PROVIDER``,
``ESTOP_SMS_PROVIDER``, ``ESTOP_PUSH_PROVIDER``, ``ESTOP_WEBPUSH_PROVIDER``): each a URL whose
scheme names the kind of provider, e.g. ``simulated`` or ``smtp://localhost:2525``. See
docs/providers.md for the contract (``streams.providers.base``) and how to add an adapter."""

from __future__ import annotations

import importlib
from urllib.parse import SplitResult, urlsplit

from streams.providers.base import CancelCapability, ProviderAdapter
from streams.providers.exceptions import ProviderConfigError
from streams.settings import Settings

# scheme -> the adapter class, "module:Class" (imported when used, so an adapter's dependencies
# load only when a channel is configured for it), and the channels it serves. Every adapter opens
# the same way: ``Class.from_url(settings, channel, parsed URL)`` (``ProviderAdapter.from_url``).
REGISTRY: dict[str, tuple[str, tuple[str, ...]]] = {
    "simulated": ("streams.providers.simulated:SimulatedAdapter", ("email", "sms", "push", "webpush")),
    "smtp": ("streams.providers.smtp:SmtpAdapter", ("email",)),
    "smpp": ("streams.providers.smpp:SmppAdapter", ("sms",)),
    "webpush": ("streams.providers.webpush:WebPushAdapter", ("webpush",)),
    "fcm": ("streams.providers.fcm:FcmAdapter", ("push",)),
    "fcm+http": ("streams.providers.fcm:FcmAdapter", ("push",)),
}


def _entry(settings: Settings, channel: str) -> tuple[SplitResult, str]:
    """(parsed URL, "module:Class" of the adapter) the settings choose for this channel;
    ProviderConfigError for a URL that names no known provider or one that does not carry this
    channel."""
    url = settings.provider_url(channel).strip()
    setting = f"ESTOP_{channel.upper()}_PROVIDER"
    parsed = urlsplit(url if "://" in url else f"{url}://")
    entry = REGISTRY.get(parsed.scheme.lower())
    if entry is None:
        known = ", ".join(sorted(REGISTRY))
        raise ProviderConfigError(f"{setting}={url!r}: unknown provider (known: {known})")
    target, channels = entry
    if channel not in channels:
        raise ProviderConfigError(f"{setting}={url!r}: a {parsed.scheme} provider does not carry "
                                  f"{channel} (it carries {', '.join(channels)})")
    return parsed, target


def open_provider(settings: Settings, channel: str) -> ProviderAdapter:
    """The adapter the settings choose for this channel; ProviderConfigError for a URL that names
    no known provider (or one that does not carry this channel), ProviderUnavailableError for a
    provider that does not answer."""
    parsed, target = _entry(settings, channel)
    return _adapter_class(target).from_url(settings, channel, parsed)


def cancel_capability(settings: Settings, channel: str) -> CancelCapability:
    """What a stop can do about messages the channel's provider accepted, as its adapter
    declares it (``ProviderAdapter.cancel_capability``), read without connecting to it."""
    return _adapter_class(_entry(settings, channel)[1]).cancel_capability


def _adapter_class(target: str) -> type[ProviderAdapter]:
    module, name = target.split(":")
    adapter: type[ProviderAdapter] = getattr(importlib.import_module(module), name)
    return adapter
