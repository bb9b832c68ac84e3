"""What one target's probe asks (ProbeSpec, from its configuration) and what it
found (AddressResult per address, ProbeResult per target), and the caps that
bound every try: bytes read, head and body sizes, chunks of a chunked body.
"""

from __future__ import annotations

from dataclasses import dataclass

from spdu_cli.probe.cert import Cert

MAX_HEADER = 16 * 1024  # one response head (interim ones each count alone)
MAX_BODY = 8 * 1024  # decoded body (tcp: banner) examined for probeMatch, read only when set
MAX_CHUNKS = 1024  # chunks of a chunked body: parsing each costs CPU that other probes wait for
MAX_RAW = 64 * 1024  # every byte read on one try: heads, framing, compressed body
READ_SIZE = 16 * 1024  # one recv()
STOP_POLL = 0.2  # how often a probe run looks at its stop event (SIGTERM in the cron loop)


@dataclass(frozen=True)
class ProbeSpec:
    """One target's probe, as the configuration says."""

    target: str
    host: str  # the public API name: Host header, SNI, certificate name
    addresses: tuple[str, ...]  # empty: resolve `resolve_name`
    resolve_name: str
    port: int
    path: str
    tls: bool
    verify: bool
    cafile: str | None
    timeout: float
    retries: int
    codes: tuple[tuple[int, int], ...]
    match: str
    kind: str = "http"  # probeType: "http", or "tcp" (connect, TLS, banner; no request)

    @classmethod
    def from_config(cls, cfg) -> ProbeSpec:
        return cls(
            target=cfg.target,
            host=cfg.api_name,
            addresses=tuple(str(ip) for ip in cfg.target_ips),
            resolve_name=cfg.target_name,
            port=cfg.probe_port,
            path=cfg.probe_path,
            tls=cfg.probe_ssl,
            verify=cfg.probe_verify,
            cafile=cfg.probe_ca_file,
            timeout=cfg.probe_timeout,
            retries=cfg.probe_retries,
            codes=cfg.probe_codes,
            match=cfg.probe_match,
            kind=cfg.probe_type,
        )

    def accepts(self, status: int) -> bool:
        return any(low <= status <= high for low, high in self.codes)


@dataclass(frozen=True)
class AddressResult:
    address: str
    ok: bool
    status: int | None
    latency_ms: float | None
    error: str | None
    tries: int
    cert: Cert | None = None  # the leaf its TLS handshake brought, if one was done


@dataclass(frozen=True)
class ProbeResult:
    """One probe of one target: every address must answer for it to be good.

    `ok` is None when the probe could not be made at all (the target's name
    did not resolve here): that says nothing about the target's health.
    """

    target: str
    at: float
    ok: bool | None
    addresses: tuple[str, ...]
    status: int | None
    latency_ms: float | None
    error: str | None
    address: str | None  # the address the status/error refers to
    cert: Cert | None = None  # of its addresses' certificates, the first to expire

    @property
    def summary(self) -> str:
        if self.ok:  # a good TCP probe has no status
            return "connected" if self.status is None else f"HTTP {self.status}"
        return self.error or "failed"
