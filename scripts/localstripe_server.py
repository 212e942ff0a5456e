"""Run localstripe (a fake, stateful Stripe API) for development and tests.

Usage::

    python scripts/localstripe_server.py --port 8420 [--store var/localstripe/store.pickle]

Why not ``localstripe --port N`` itself:

- localstripe pickles its whole store to the fixed path ``/tmp/localstripe.pickle`` after
  every write and reloads it on start, so every instance on the machine (parallel test
  runs, a developer's ``make run``) would overwrite the others' data and resurrect stale
  objects. Here the store lives in memory only, or in the file given by ``--store``
  (written atomically, so a crash never leaves half a pickle behind).
- it listens on every interface (``::``); a fake payment API must stay on 127.0.0.1.
- its graceful shutdown waits up to 60 s for open keep-alive connections; tests stop and
  restart it to simulate an outage and need that to take well under a second.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"


def keep_store_in(path: Path | None) -> None:
    """Point localstripe's persistence at `path`, or switch it off when `path` is None."""
    from localstripe import resources

    def load(store: Any) -> None:
        if path is None or not path.exists():
            return
        try:
            with path.open("rb") as fh:
                saved = pickle.load(fh)
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
            print(f"localstripe: ignoring unreadable store {path} ({exc})", flush=True)
            return
        dict.clear(store)
        dict.update(store, saved)

    def dump(store: Any) -> None:
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        with partial.open("wb") as fh:
            pickle.dump(dict(store), fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(partial, path)

    resources.Store.try_load_from_disk = load
    resources.Store.dump_to_disk = dump


def serve(port: int, store: Path | None) -> None:
    """Serve the localstripe API on 127.0.0.1:port until SIGTERM or SIGINT."""
    keep_store_in(store)
    from aiohttp import web
    from localstripe import resources, server

    resources.store.try_load_from_disk()
    access = logging.getLogger("aiohttp.access")  # localstripe also logs webhook deliveries here
    access.setLevel(logging.INFO)
    access.addHandler(logging.StreamHandler(sys.stdout))
    where = f"store {store}" if store else "store in memory"
    print(f"localstripe: listening on {HOST}:{port} ({where})", flush=True)
    web.run_app(server.app, host=HOST, port=port, access_log=access, shutdown_timeout=1, print=None)
    print("localstripe: stopped", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``--port`` and ``--store`` and serve until stopped."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=8420)
    parser.add_argument(
        "--store", type=Path, default=None, help="persist data here (default: memory)"
    )
    opts = parser.parse_args(argv)
    serve(opts.port, opts.store.absolute() if opts.store else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
