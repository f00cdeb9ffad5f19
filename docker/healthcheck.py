#!/usr/bin/env python3
"""Container health check: GET one URL, exit 0 on a 2xx answer, 1 otherwise.

Used by the image's HEALTHCHECK. One image runs every component, so the URL comes from
INKWELL_HEALTHCHECK_URL (Compose sets it per service); the default is the router's liveness
endpoint. Standard library only, so a check costs a few milliseconds and no imports of torch.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8000/healthz"


def main() -> int:
    """Probe the URL; print why it failed so `docker inspect` shows the reason."""
    url = os.environ.get("INKWELL_HEALTHCHECK_URL", DEFAULT_URL)
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        print(f"unhealthy: {url} answered {exc.code}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {url} unreachable ({exc})", file=sys.stderr)
        return 1
    if not 200 <= status < 300:
        print(f"unhealthy: {url} answered {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
