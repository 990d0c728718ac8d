"""The factories ``open_provider`` maps each URL scheme to."""

from __future__ import annotations

from urllib.parse import SplitResult

from streams.providers.base import ProviderAdapter
from streams.providers.exceptions import ProviderConfigError
from streams.settings import Settings


def host_port(url: SplitResult, setting: str) -> tuple[str, int]:
    """The host and port a provider URL names; ProviderConfigError when either is missing."""
    try:
        port = url.port
    except ValueError as exc:
        raise ProviderConfigError(f"{setting}: invalid port in {url.geturl()!r}") from exc
    if not url.hostname or port is None:
        raise ProviderConfigError(f"{setting}: {url.geturl()!r} needs a host and a port, "
                                  f"e.g. {url.scheme}://localhost:2525")
    return url.hostname, port


def open_simulated(settings: Settings, channel: str, _url: SplitResult) -> ProviderAdapter:
    from streams.providers.simulated import SimulatedAdapter

    return SimulatedAdapter.from_settings(settings, channel)


def open_smtp(settings: Settings, channel: str, url: SplitResult) -> ProviderAdapter:
    from streams.providers.smtp import SmtpAdapter

    host, port = host_port(url, f"ESTOP_{channel.upper()}_PROVIDER")
    return SmtpAdapter.connect(settings, channel, host, port)


def open_smpp(settings: Settings, _channel: str, url: SplitResult) -> ProviderAdapter:
    from streams.providers.smpp import SmppAdapter

    return SmppAdapter.from_url(settings, url)


def open_webpush(settings: Settings, _channel: str, url: SplitResult) -> ProviderAdapter:
    from streams.providers.webpush import WebPushAdapter

    return WebPushAdapter.from_url(settings, url)


def open_fcm(settings: Settings, _channel: str, url: SplitResult) -> ProviderAdapter:
    from streams.providers.fcm import FcmAdapter

    return FcmAdapter.from_url(settings, url)
