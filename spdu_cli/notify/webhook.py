"""Webhook notifications: the notices notify would mail, as one HTTP POST per receiver.

Three formats (json, slack, ntfy; see spdu.conf(5), webhookFormat) rendered by
pure functions; delivery through requests, imported only when a POST goes out,
each POST in a thread of its own under a hard deadline.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from spdu_cli import __version__
from spdu_cli.config import WebhookConfig
from spdu_cli.errors import ConfigError, ServiceUnavailable, SpduError
from spdu_cli.notify.text import CONTROL, body, subject

if TYPE_CHECKING:
    from spdu_cli.notify.outbox import Post

FORMAT_VERSION = 1  # of the json format: a receiver may rely on every field it names
NTFY_MAX = 4000  # bytes of body: ntfy turns a longer message into an attachment, or refuses it
SLACK_MAX = 35000  # characters of text: Slack cuts a message at 40,000
LATER = "the changes stay pending for this receiver and go out with the next run"


# -- what goes out (pure) ------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One POST, as it will be sent."""

    url: str = field(repr=False)
    headers: dict[str, str]
    body: bytes

    def shown(self, cfg: WebhookConfig) -> str:
        """For --dry-run: what the receiver would get, the token and URL path left out."""
        head = [f"POST {cfg.where}"]
        for name, value in self.headers.items():
            head.append(f"{name}: {'Bearer ********' if name == 'Authorization' else value}")
        return "\n".join(head) + "\n\n" + self.body.decode() + "\n"


def delivery_id(post: Post) -> str:
    """The same for every retry of the same POST, so a receiver can drop a repeat."""
    if post.message_id:  # a POST sent before (maybe), whose marking was lost
        return post.message_id
    keys = "\n".join(f"{t}:{c.id}:{c.stamp}" for t, c in post.changes)
    return "spdu." + hashlib.sha256(
        f"{post.config.tag}\n{post.config.channel}\n{keys}".encode()).hexdigest()[:20]


def _iso(ts: float | None) -> str | None:
    from spdu_cli.entry import iso

    return iso(ts) if ts else None


def document(post: Post, now: float) -> dict[str, Any]:
    """The json format (spdu.conf(5), webhookFormat): every transition with what DNS did."""
    summary = CONTROL.sub(" ", subject(post))
    return {
        "spdu": FORMAT_VERSION,
        "id": delivery_id(post),
        "site": post.config.tag,
        "sent_at": _iso(now),
        "level": summary.split(":", 1)[0].lower(),
        "summary": summary,
        "transitions": [
            {
                "target": n.view.target,
                "host": n.view.host,
                "addresses": list(n.view.addresses),
                "url": n.view.url,
                "id": c.id,
                "at": _iso(c.at),
                "from": c.old,
                "to": c.new,
                "reason": c.reason,
                "until": _iso(c.until),
                "flapping": bool(n.flapping),
                "dns": [{"at": _iso(d.at), "action": d.action, "address": d.address,
                         "rrset": d.rrset, "server": d.server} for d in c.dns],
            }
            for n in post.notices for c in n.changes
        ],
        "flapping": [
            {"target": n.view.target, "changes": n.flapping, "window": n.view.flap_window,
             "next_summary": _iso(n.next_summary)}
            for n in post.notices if n.flapping
        ],
        "text": body(post),
    }


def _capped(text: str, limit: int, size=len) -> str:
    """At most `limit` (as `size` counts), cut at a line, saying so."""
    if size(text) <= limit:
        return text
    note = "\n[... cut: see `spdu history` for the rest]\n"
    lines, out = text.splitlines(keepends=True), ""
    for line in lines:
        if size(out + line + note) > limit:
            break
        out += line
    return out + note


def _encoded(value: str) -> str:
    """A header value: one line; RFC 2047 when not ASCII (ntfy decodes it)."""
    import base64

    value = CONTROL.sub(" ", value)
    if value.isascii():
        return value
    return "=?UTF-8?B?" + base64.b64encode(value.encode()).decode() + "?="


def request(post: Post, now: float) -> Request:
    """The POST for the receiver's format."""
    cfg = post.config
    headers = {"User-Agent": f"spdu/{__version__}", "Idempotency-Key": delivery_id(post)}
    summary = CONTROL.sub(" ", subject(post))
    warn = summary.startswith("WARNING")
    if cfg.format == "ntfy":
        data = _capped(body(post), NTFY_MAX, lambda s: len(s.encode())).encode()
        headers.update({
            "Content-Type": "text/plain; charset=utf-8",
            "Title": _encoded(summary),
            "Priority": "high" if warn else "default",
            "Tags": "warning" if warn else "white_check_mark",
        })
    elif cfg.format == "slack":
        text = f"*{summary}*\n{body(post)}"
        # Slack's mrkdwn: &, < and > are its own syntax and must be escaped.
        text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        data = json.dumps({"text": _capped(text, SLACK_MAX)}, ensure_ascii=False).encode()
        headers["Content-Type"] = "application/json; charset=utf-8"
    else:
        data = json.dumps(document(post, now), ensure_ascii=False, indent=1).encode()
        headers["Content-Type"] = "application/json; charset=utf-8"
    if cfg.token:
        headers["Authorization"] = f"Bearer {cfg.token}"
    return Request(cfg.url, headers, data)


def notice(cfg: WebhookConfig, summary: str, text: str, now: float) -> Request:
    """A POST about spdu itself (the cron loop's trouble), in the receiver's
    format; in the json format, a document with no transitions."""
    summary = CONTROL.sub(" ", summary)
    key = "spdu." + hashlib.sha256(f"{cfg.tag}\n{cfg.channel}\n{summary}\n{now}".encode()
                                   ).hexdigest()[:20]
    headers = {"User-Agent": f"spdu/{__version__}", "Idempotency-Key": key}
    warn = summary.startswith("WARNING")
    if cfg.format == "ntfy":
        data = _capped(text, NTFY_MAX, lambda s: len(s.encode())).encode()
        headers.update({"Content-Type": "text/plain; charset=utf-8", "Title": _encoded(summary),
                        "Priority": "high" if warn else "default",
                        "Tags": "warning" if warn else "white_check_mark"})
    else:
        if cfg.format == "slack":
            doc: dict[str, Any] = {"text": f"*{summary}*\n{text}".replace("&", "&amp;").replace(
                "<", "&lt;").replace(">", "&gt;")}
        else:
            doc = {"spdu": FORMAT_VERSION, "id": key, "site": cfg.tag, "sent_at": _iso(now),
                   "level": summary.split(":", 1)[0].lower(), "summary": summary,
                   "transitions": [], "flapping": [], "text": text}
        data = json.dumps(doc, ensure_ascii=False, indent=1).encode()
        headers["Content-Type"] = "application/json; charset=utf-8"
    if cfg.token:
        headers["Authorization"] = f"Bearer {cfg.token}"
    return Request(cfg.url, headers, data)


# -- HTTP -------------------------------------------------------------------------------


def _verify(cfg: WebhookConfig) -> str | bool:
    """webhookCAFile, else the system's trust store (as for mail), else requests' own."""
    import ssl

    if cfg.ca_file:
        if not os.access(cfg.ca_file, os.R_OK):
            raise ConfigError(f"webhookCAFile {cfg.ca_file}: cannot read it")
        return cfg.ca_file
    paths = ssl.get_default_verify_paths()
    if paths.cafile and os.path.isfile(paths.cafile):
        return paths.cafile
    if paths.capath and os.path.isdir(paths.capath):
        return paths.capath
    return True


def _cause(e: BaseException) -> BaseException:
    """The innermost cause: requests wraps urllib3's errors, which wrap the socket's.
    Their own text names the URL, path included, so it is never shown."""
    seen = set()
    while id(e) not in seen:
        seen.add(id(e))
        inner = e.__cause__ or e.__context__
        if inner is None:
            inner = next((a for a in getattr(e, "args", ()) if isinstance(a, BaseException)), None)
        if inner is None:
            inner = getattr(e, "reason", None)
            if not isinstance(inner, BaseException):
                return e
        e = inner
    return e


def failure(cfg: WebhookConfig, e: BaseException) -> SpduError:
    """One clear error for what requests raised, without the URL's path."""
    import ssl

    import requests

    where = cfg.where
    if isinstance(e, requests.exceptions.SSLError):
        cause = _cause(e)
        if isinstance(cause, ssl.SSLCertVerificationError):
            return ServiceUnavailable(f"{where}: certificate not trusted ({cause.verify_message})",
                                      f"set webhookCAFile to the CA that signed it; {LATER}")
        tls = isinstance(cause, ssl.SSLError) and cause.reason
        why = cause.reason if tls else type(cause).__name__
        return ServiceUnavailable(f"{where}: TLS failed ({why})", LATER)
    if isinstance(e, requests.exceptions.Timeout):
        return ServiceUnavailable(f"{where} did not answer within {cfg.timeout:g} s",
                                  f"webhookTimeout; {LATER}")
    if isinstance(e, requests.exceptions.RequestException):
        cause = _cause(e)
        if isinstance(cause, ConnectionRefusedError):
            return ServiceUnavailable(f"{where} refused the connection", f"is it running? {LATER}")
        if isinstance(cause, socket.gaierror):
            return ServiceUnavailable(f"{where}: cannot resolve its host name ({cause.strerror})",
                                      LATER)
        if isinstance(cause, OSError) and cause.strerror:
            return ServiceUnavailable(f"{where}: {cause.strerror}", LATER)
        return ServiceUnavailable(f"{where}: the connection failed ({type(cause).__name__})",
                                  LATER)
    if isinstance(e, OSError):
        return ServiceUnavailable(f"{where}: {e.strerror or type(e).__name__}", LATER)
    raise e


def refusal(cfg: WebhookConfig, status: int, reason: str) -> SpduError | None:
    """None for 2xx. 408, 429 and 5xx may pass: 69. Any other answer is a refusal of
    this request as such (URL, token or format wrong): 78, and the changes stay
    pending all the same, so fixing the setting delivers them."""
    if 200 <= status < 300:
        return None
    reason = CONTROL.sub(" ", reason or "")[:60].strip()
    answered = f"{cfg.where} answered {status}{' ' + reason if reason else ''}"
    if status in (408, 429) or status >= 500:
        return ServiceUnavailable(answered, LATER)
    if 300 <= status < 400:
        return ConfigError(f"{answered}, a redirect (not followed)",
                           f"set webhookURL to the address it redirects to; {LATER}")
    fix = {401: "check webhookTokenFile", 403: "check webhookTokenFile",
           404: "check webhookURL", 410: "check webhookURL"}.get(status, "check webhookFormat")
    return ConfigError(f"{answered}: it refuses this request", f"{fix}; {LATER}")


def send(cfg: WebhookConfig, req: Request) -> int:
    """POST `req`; returns the status when the receiver accepted it (2xx), raises
    otherwise (the error's `maybe_sent`: whether the receiver may have taken it
    all the same). Redirects are not followed and the answer's body is not read."""
    import requests
    from requests.utils import get_environ_proxies

    verify = _verify(cfg)
    with requests.Session() as s:
        s.trust_env = False  # no ~/.netrc: it could replace the token
        try:
            r = s.post(req.url, data=req.body, headers=req.headers,
                       timeout=(cfg.timeout, cfg.timeout),
                       allow_redirects=False, verify=verify, stream=True,
                       proxies=get_environ_proxies(req.url))
        except (requests.exceptions.RequestException, OSError) as e:
            err = failure(cfg, e)
            # Never connected: surely not received. Else it may have been.
            err.maybe_sent = not isinstance(
                _cause(e), ConnectionRefusedError | socket.gaierror)
            raise err from None
        r.close()
    err = refusal(cfg, r.status_code, r.reason)
    if err is not None:
        err.maybe_sent = False  # it answered: it did not take it
        raise err
    return r.status_code


@dataclass
class Sending:
    """One POST in flight, in a thread of its own: a receiver that hangs or trickles
    delays only itself, and no longer than its webhookTimeout."""

    config: WebhookConfig
    request: Request
    status: int | None = None
    error: SpduError | None = None
    _thread: threading.Thread | None = field(default=None, repr=False)
    _deadline: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _abandoned: bool = False

    def start(self) -> None:
        import requests  # noqa: F401 - imported once here, not by several threads at once

        self._deadline = time.monotonic() + self.config.timeout + 0.2
        self._thread = threading.Thread(target=self._run, name="spdu-webhook", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        status, error = None, None
        try:
            status = send(self.config, self.request)
        except SpduError as e:
            error = e
        except Exception as e:  # noqa: BLE001 - a bug: reported as such, the changes stay pending
            error = SpduError(f"{self.config.where}: internal error: {type(e).__name__}")
        with self._lock:
            if not self._abandoned:
                self.status, self.error = status, error

    def wait(self) -> bool:
        """Whether the receiver accepted it; past the deadline, a thread still waiting
        is left behind (a daemon: its answer, if any, is ignored)."""
        assert self._thread is not None
        self._thread.join(max(0.0, self._deadline - time.monotonic()))
        with self._lock:
            if self._thread.is_alive():
                self._abandoned = True
                self.error = ServiceUnavailable(
                    f"{self.config.where} did not answer within {self.config.timeout:g} s",
                    f"webhookTimeout; {LATER}")
            return self.error is None
