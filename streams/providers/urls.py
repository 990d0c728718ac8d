"""Reading a provider URL (``ESTOP_<CHANNEL>_PROVIDER``): its host and port, and the options
in its query (``?ttl_s=60``), each a clear ProviderConfigError naming the setting when wrong."""

from __future__ import annotations

from urllib.parse import SplitResult, parse_qs

from streams.providers.exceptions import ProviderConfigError


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


def query_number(url: SplitResult, setting: str, name: str, default: float, minimum: float) -> float:
    """A number from a provider URL's query (``?ttl_s=60``); ProviderConfigError when it is not
    one or is below ``minimum``."""
    raw = query_text(url, name, "")
    try:
        value = float(raw) if raw else default
    except ValueError as exc:
        raise ProviderConfigError(f"{setting}: {name} must be a number, not {raw!r}") from exc
    if value < minimum:
        raise ProviderConfigError(f"{setting}: {name} must be at least {minimum:g}")
    return value


def query_text(url: SplitResult, name: str, default: str) -> str:
    """A text option from a provider URL's query (the last one given), or ``default``."""
    values = parse_qs(url.query).get(name)
    return values[-1] if values else default
