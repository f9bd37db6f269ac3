"""The soak's `/ready` prober keeps probing when an answer is cut off, as when a worker is killed mid-response."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from recsys_assets.tools.loadgen.faults import Prober


class _Flaky(BaseHTTPRequestHandler):
    calls = 0

    def do_GET(self) -> None:
        type(self).calls += 1
        self.send_response(200)
        self.send_header("Content-Length", "63")
        self.end_headers()
        if type(self).calls <= 2:  # the first two answers stop after their headers
            self.wfile.flush()
            self.connection.close()
            return
        self.wfile.write(b"x" * 63)

    def log_message(self, *args: object) -> None:
        pass


def test_a_cut_answer_counts_as_no_answer_and_probing_goes_on() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    prober = Prober(f"http://127.0.0.1:{server.server_address[1]}", every=0.05)
    try:
        prober.start()
        time.sleep(0.6)
    finally:
        prober.join()
        server.shutdown()
    statuses = [status for _, status in prober.results]
    assert statuses[:2] == [0, 0] and len(statuses) >= 6 and set(statuses[2:]) == {200}
