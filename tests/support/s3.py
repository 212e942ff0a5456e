"""moto's S3 over real HTTP (in a thread) for the app and its workers."""

from __future__ import annotations

import os


class MotoS3:
    """moto's S3 in server mode (real HTTP, in a thread), for the app and its workers.

    boto3 needs credentials even for moto: dummy ones go into os.environ, which
    `settings_env` copies, so worker subprocesses sign requests the same way.
    """

    def __init__(self, port: int) -> None:
        from moto.server import ThreadedMotoServer

        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)

    def start(self) -> None:
        os.environ["AWS_ACCESS_KEY_ID"] = "testing"
        os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
        os.environ.pop("AWS_SESSION_TOKEN", None)
        self._server.start()

    def stop(self) -> None:
        self._server.stop()
