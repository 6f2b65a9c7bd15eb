"""URLs as edgequant prints them: credentials never reach a message, a progress line or a CI log."""

from __future__ import annotations

import base64
import re
import urllib.request
from urllib.parse import unquote, urlsplit, urlunsplit

# The userinfo of a URL: everything between "scheme://" and the last "@" before the host's first "/".
# Greedy, so a password with a raw "@" in it ("u:p@ss@host") is hidden whole.
USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s?#'\"]*@")
# What a URL written without its scheme looks like: "user:password@host/..."
SCHEMELESS_USERINFO = re.compile(r"^[^/\s@:]+:[^/\s]*@")
HIDDEN = "***"


def redact(text: str) -> str:
    """`text` (a URL, or a message naming URLs) with the user and password of every URL replaced by ***.

    The user goes too: a token is often passed as the user alone (https://TOKEN@host/)."""
    text = USERINFO.sub(lambda m: f"{m['scheme']}{HIDDEN}@", text)
    return SCHEMELESS_USERINFO.sub(f"{HIDDEN}@", text)


def has_schemeless_credentials(text: str) -> bool:
    """True for "user:password@host/path": a URL whose scheme was left out, never a directory meant as such."""
    return bool(SCHEMELESS_USERINFO.match(text))


def request(url: str) -> urllib.request.Request | str:
    """What to hand urllib for `url`: an http(s) URL with credentials becomes a request without them and
    with HTTP Basic auth. urllib itself would take "user:password@host" for the host name (and print it in
    its error); the header is unredirected, so a redirect to another host never carries the password."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    req = urllib.request.Request(urlunsplit(parts._replace(netloc=host)))
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode("ascii")
    req.add_unredirected_header("Authorization", f"Basic {token}")
    return req
