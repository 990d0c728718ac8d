"""Provider adapters, one per channel, chosen by settings (``ESTOP_EMAIL_PROVIDER``,
``ESTOP_SMS_PROVIDER``, ``ESTOP_PUSH_PROVIDER``, ``ESTOP_WEBPUSH_PROVIDER``): each a URL whose
scheme names the kind of provider, e.g. ``simulated`` or ``smtp://localhost:2525``. See
docs/providers.md for the contract (``streams.providers.base``) and how to add an adapter."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from urllib.parse import SplitResult, urlsplit

from streams.providers.base import CancelCapability, ProviderAdapter
from streams.providers.exceptions import ProviderConfigError
from streams.settings import Settings

# A factory opens an adapter for a channel from the settings and the parsed URL; it raises
# ProviderUnavailableError when the provider does not answer.
Factory = Callable[[Settings, str, SplitResult], ProviderAdapter]

# scheme -> "module:function" (imported when used, so an adapter's dependencies load only when
# a channel is configured for it), "module:Class" of the adapter (what it declares, e.g. whether
# a stop can cancel there, read without connecting), and the channels it serves.
REGISTRY: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "simulated": ("streams.providers.registry:open_simulated",
                  "streams.providers.simulated:SimulatedAdapter", ("email", "sms", "push", "webpush")),
    "smtp": ("streams.providers.registry:open_smtp", "streams.providers.smtp:SmtpAdapter",
             ("email",)),
    "smpp": ("streams.providers.registry:open_smpp", "streams.providers.smpp:SmppAdapter", ("sms",)),
    "webpush": ("streams.providers.registry:open_webpush",
                "streams.providers.webpush:WebPushAdapter", ("webpush",)),
    "fcm": ("streams.providers.registry:open_fcm", "streams.providers.fcm:FcmAdapter", ("push",)),
    "fcm+http": ("streams.providers.registry:open_fcm", "streams.providers.fcm:FcmAdapter",
                 ("push",)),
}


def _entry(settings: Settings, channel: str) -> tuple[SplitResult, str, str]:
    """(parsed URL, factory, adapter class) the settings choose for this channel;
    ProviderConfigError for a URL that names no known provider or one that does not carry this
    channel."""
    url = settings.provider_url(channel).strip()
    setting = f"ESTOP_{channel.upper()}_PROVIDER"
    parsed = urlsplit(url if "://" in url else f"{url}://")
    entry = REGISTRY.get(parsed.scheme.lower())
    if entry is None:
        known = ", ".join(sorted(REGISTRY))
        raise ProviderConfigError(f"{setting}={url!r}: unknown provider (known: {known})")
    target, adapter, channels = entry
    if channel not in channels:
        raise ProviderConfigError(f"{setting}={url!r}: a {parsed.scheme} provider does not carry "
                                  f"{channel} (it carries {', '.join(channels)})")
    return parsed, target, adapter


def open_provider(settings: Settings, channel: str) -> ProviderAdapter:
    """The adapter the settings choose for this channel; ProviderConfigError for a URL that names
    no known provider (or one that does not carry this channel), ProviderUnavailableError for a
    provider that does not answer."""
    parsed, target, _ = _entry(settings, channel)
    module, function = target.split(":")
    factory: Factory = getattr(importlib.import_module(module), function)
    return factory(settings, channel, parsed)


def cancel_capability(settings: Settings, channel: str) -> CancelCapability:
    """What a stop can do about messages the channel's provider accepted, as its adapter
    declares it (``ProviderAdapter.cancel_capability``), read without connecting to it."""
    module, name = _entry(settings, channel)[2].split(":")
    declared: CancelCapability = getattr(importlib.import_module(module), name).cancel_capability
    return declared
