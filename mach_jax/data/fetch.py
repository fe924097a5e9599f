"""Fetching one URL into a file, streamed through a ``.part`` file that a later call resumes.

`fetch` follows Google Drive's "file too large to scan: download anyway" page once, and turns
every HTTP or network failure into a one-line `DatasetError` (without a network, it names
``--url FILE``: a file fetched on another machine). `mach_jax.data.download` uses it.
"""

from __future__ import annotations

import html.parser
import http.client
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from mach_jax.data.files import BLOCK_BYTES
from mach_jax.errors import DatasetError

_TIMEOUT_S = 60


class _FormFinder(html.parser.HTMLParser):
    """Each form's action and hidden inputs (Google Drive's "download anyway" page is one)."""

    def __init__(self):
        super().__init__()
        self.forms: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form":
            self.forms.append((attrs.get("action") or "", {}))
        elif tag == "input" and self.forms and attrs.get("type") == "hidden" and attrs.get("name"):
            self.forms[-1][1][attrs["name"]] = attrs.get("value") or ""


def _confirm_url(page: bytes, base: str) -> str | None:
    """The URL behind a "file too large to scan: download anyway" form, or None."""
    finder = _FormFinder()
    finder.feed(page.decode("utf-8", "replace"))
    for action, fields in finder.forms:
        if "confirm" in fields:
            return urllib.parse.urljoin(base, action) + "?" + urllib.parse.urlencode(fields)
    return None


def _open_url(url: str, start: int):
    """The response for url from byte `start` on; None if the server refuses that range."""
    headers = {"User-Agent": "mach_jax"} | ({"Range": f"bytes={start}-"} if start else {})
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                      timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and start:
            return None
        raise DatasetError(f"{url}: HTTP error {e.code} ({e.reason})") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
        raise DatasetError(f"{url}: cannot connect ({getattr(e, 'reason', e)}); without a network, "
                           "fetch the file on another machine and pass it with --url FILE") from None


def fetch(url: str, dest: Path, *, progress: bool = True, _hops: int = 0) -> Path:
    """Downloads url to dest (and returns dest), streamed through ``dest.part``, which a later
    call resumes.

    Args:
      url: what to fetch (http(s), or file:// for a local file).
      dest: where the complete file goes.
      progress: show a progress bar.

    Raises:
      DatasetError: HTTP or network failure, an HTML page instead of data, a cut-off transfer.
    """
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.exists() else 0
    response = _open_url(url, start)
    if response is None:  # 416: the partial file cannot be continued
        part.unlink()
        start, response = 0, _open_url(url, 0)
    with response:
        if response.headers.get_content_type() == "text/html":
            target = _confirm_url(response.read(1 << 20), response.geturl())
            if target is None or _hops:
                raise DatasetError(f"{url}: the server sent an HTML page, not the data (a quota or "
                                   "sign-in page?); fetch the file in a browser and pass its path "
                                   "with --url")
            return fetch(target, dest, progress=progress, _hops=1)
        if response.status != 206:
            start = 0  # the server ignored the range: start over
        length = response.headers.get("Content-Length", "")
        total = start + int(length) if length.isdigit() else None
        done, problem = start, None
        with open(part, "ab" if start else "wb") as f, tqdm(
                total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                desc=dest.name, disable=not progress, leave=False) as bar:
            try:
                while chunk := response.read(BLOCK_BYTES):
                    f.write(chunk)
                    bar.update(len(chunk))
                    done += len(chunk)
            except (OSError, http.client.HTTPException) as e:
                problem = f"{type(e).__name__}: {e}"
    if problem is None and total is not None and done < total:
        problem = f"{total - done} bytes missing"
    if problem is not None:
        raise DatasetError(f"{url}: download stopped after {done} bytes ({problem}); "
                           "run the same command again to resume")
    os.replace(part, dest)
    return dest
