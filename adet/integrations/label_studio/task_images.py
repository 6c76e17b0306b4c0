"""A task's image, fetched under the backend's rules, so that a task (anyone who can create one) cannot make the
backend read a file or call a host it should not:

- Label Studio's own URLs (``/data/upload/...``, ``/data/local-files/?d=...``, relative or on ``LABEL_STUDIO_URL``)
  are fetched from Label Studio with ``LABEL_STUDIO_API_KEY``; local files are read from ``--local-root`` instead
  when it is given (the folder Label Studio's ``LOCAL_FILES_DOCUMENT_ROOT`` names), and only under it.
- http(s) URLs on any other host only when they start with an ``--allow-url-prefix`` (without the API key).
- Redirects are followed (at most 5) only to URLs the same rules allow; any other scheme (``file://``, ``s3://``)
  is refused.

Every refusal is a :class:`TaskImageError` with one line, raised before anything is fetched.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from adet.errors import EmbedMaskError

MAX_REDIRECTS = 5


class TaskImageError(EmbedMaskError):
    """A task image that is refused or cannot be fetched."""


class NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # each redirect is checked against the rules before it is followed
        return None


def jwt_claims(token: str) -> dict | None:
    """The claims of a JSON Web Token (unverified: only to tell a personal access token from a legacy one)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        return json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, UnicodeDecodeError):
        return None


class LabelStudioAuth:
    """The ``Authorization`` header for Label Studio: ``Token KEY`` for a legacy token; for a personal access
    token (a JWT refresh token), ``Bearer ACCESS`` with an access token from ``POST /api/token/refresh``, renewed
    before it expires (as Label Studio's SDK does)."""

    def __init__(self, base_url: str, api_key: str, opener: urllib.request.OpenerDirector):
        self.base_url, self.api_key, self.opener = base_url, api_key, opener
        claims = jwt_claims(api_key)
        self.personal = claims is not None and claims.get("token_type") == "refresh"
        self.access, self.expires = "", 0.0
        self.lock = threading.Lock()

    def header(self, renew: bool = False) -> dict[str, str]:
        if not self.api_key:
            return {}
        if not self.personal:
            return {"Authorization": f"Token {self.api_key}"}
        with self.lock:
            if renew or time.time() > self.expires - 30:
                self.access = self.refreshed()
                self.expires = float((jwt_claims(self.access) or {}).get("exp", time.time() + 300))
            return {"Authorization": f"Bearer {self.access}"}

    def refreshed(self) -> str:
        request = urllib.request.Request(f"{self.base_url}/api/token/refresh", method="POST",
                                         data=json.dumps({"refresh": self.api_key}).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with self.opener.open(request, timeout=30) as response:
                return json.loads(response.read())["access"]
        except (urllib.error.URLError, OSError, ValueError, KeyError) as e:
            raise TaskImageError(f"LABEL_STUDIO_API_KEY: Label Studio at {self.base_url} refused to refresh the "
                                 f"personal access token ({getattr(e, 'code', None) or e})") from None


def url_prefix(prefix: str) -> str:
    """A URL prefix that matches at a path boundary: ``http://host`` becomes ``http://host/``."""
    parts = urllib.parse.urlsplit(prefix)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"--allow-url-prefix {prefix}: not an http(s) URL")
    return prefix if parts.path else prefix + "/"


class TaskImages:
    """Fetches task images: ``label_studio_url`` and ``api_key`` (``LABEL_STUDIO_URL``, ``LABEL_STUDIO_API_KEY``),
    ``local_root`` (``--local-root``), ``allowed_prefixes`` (``--allow-url-prefix``), ``max_bytes`` per image."""

    def __init__(self, label_studio_url: str = "", api_key: str = "", local_root: str = "",
                 allowed_prefixes: tuple[str, ...] = (), max_bytes: int = 64 << 20, timeout_s: float = 30.0):
        self.label_studio_url = label_studio_url.rstrip("/")
        self.local_root = os.path.realpath(local_root) if local_root else ""
        self.allowed_prefixes = tuple(url_prefix(p) for p in allowed_prefixes)
        self.max_bytes, self.timeout_s = max_bytes, timeout_s
        self.opener = urllib.request.build_opener(NoRedirects)
        self.auth = LabelStudioAuth(self.label_studio_url, api_key, self.opener)

    def on_label_studio(self, url: str) -> bool:
        return bool(self.label_studio_url) and (url == self.label_studio_url or url.startswith(
            self.label_studio_url + "/"))

    def resolve(self, url: str) -> str:
        """The absolute URL (or local path) ``url`` of a task is read from; :class:`TaskImageError` if refused."""
        parts = urllib.parse.urlsplit(url)
        if not parts.scheme and not parts.netloc:  # relative: Label Studio's own /data/... URLs
            if not url.startswith("/data/"):
                raise TaskImageError(f"task image {url!r}: a relative URL other than Label Studio's /data/...")
            if self.local_root and parts.path == "/data/local-files/":
                return self.local_path(url)
            if not self.label_studio_url:
                raise TaskImageError(f"task image {url}: set LABEL_STUDIO_URL (and LABEL_STUDIO_API_KEY) for the "
                                     "backend to fetch Label Studio's files")
            return self.label_studio_url + url
        if parts.scheme not in ("http", "https"):
            raise TaskImageError(f"task image {url}: the scheme {parts.scheme or '(none)'}:// is not fetched "
                                 "(http(s) only)")
        if self.on_label_studio(url):
            if self.local_root and parts.path.endswith("/data/local-files/"):
                return self.local_path(url)
            return url
        if any(url.startswith(prefix) for prefix in self.allowed_prefixes):
            return url
        raise TaskImageError(f"task image {url}: host {parts.netloc} is neither LABEL_STUDIO_URL nor under an "
                             "--allow-url-prefix")

    def local_path(self, url: str) -> str:
        relative = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query).get("d", [""])[0]
        path = os.path.realpath(os.path.join(self.local_root, relative))
        if not relative or os.path.commonpath([path, self.local_root]) != self.local_root:
            raise TaskImageError(f"task image {url}: the file is not under --local-root {self.local_root}")
        return path

    def fetch(self, url: str) -> bytes:
        """The bytes of the image at ``url`` (a task's data field)."""
        target = self.resolve(url)
        for _ in range(MAX_REDIRECTS + 1):
            if not target.startswith(("http://", "https://")):
                return self.read_local(target, url)
            location = self.get(target, url)
            if isinstance(location, bytes):
                return location
            target = self.resolve(urllib.parse.urljoin(target, location))
        raise TaskImageError(f"task image {url}: more than {MAX_REDIRECTS} redirects")

    def read_local(self, path: str, url: str) -> bytes:
        try:
            if os.path.getsize(path) > self.max_bytes:
                raise TaskImageError(f"task image {url}: {path} is over {self.max_bytes >> 20} MB")
            with open(path, "rb") as f:
                return f.read()
        except OSError as e:
            raise TaskImageError(f"task image {url}: cannot read {path} ({e.strerror or e})") from None

    def get(self, target: str, url: str, renewed: bool = False) -> bytes | str:
        """The body at ``target``, or the Location of its redirect."""
        headers = self.auth.header(renewed) if self.on_label_studio(target) else {}
        request = urllib.request.Request(target, headers=headers)
        try:
            with self.opener.open(request, timeout=self.timeout_s) as response:
                data = response.read(self.max_bytes + 1)
        except urllib.error.HTTPError as e:
            if e.code in (301, 302, 303, 307, 308) and e.headers.get("Location"):
                return e.headers["Location"]
            if e.code == 401 and self.auth.personal and not renewed:
                return self.get(target, url, renewed=True)
            raise TaskImageError(f"task image {url}: {target} answered {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError) as e:
            raise TaskImageError(f"task image {url}: cannot fetch {target} ({getattr(e, 'reason', e)})") from None
        if len(data) > self.max_bytes:
            raise TaskImageError(f"task image {url}: over {self.max_bytes >> 20} MB")
        return data
