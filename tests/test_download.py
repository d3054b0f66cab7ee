"""Downloads from a server that stalls: given up within the time allowed, nothing left behind.

The servers are threads on 127.0.0.1; the opener refuses any other address and any proxy,
so no test reaches the network. Timeouts are shortened to fractions of a second.
"""
import socket
import threading
import time
import urllib.request

import pytest

from fastnn import cli
from fastnn.datasets import DownloadError, download_mnist, mnist

#: Whatever a test does, a server thread stops after this long.
SERVER_LIFE_S = 30


class _Server:
    """A TCP server on 127.0.0.1 in a thread; ``answer(conn, stop)`` handles each connection."""

    def __init__(self, answer):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/"
        self.answer, self.stop, self.conns = answer, threading.Event(), []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        ends = time.monotonic() + SERVER_LIFE_S
        while not self.stop.is_set() and time.monotonic() < ends:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # the accept timeout: look at the stop flag again
                continue
            self.conns.append(conn)
            threading.Thread(target=self.answer, args=(conn, self.stop), daemon=True).start()

    def close(self):
        self.stop.set()
        self.thread.join(5)
        for conn in self.conns:
            conn.close()
        self.sock.close()


def _silent(conn, stop):
    """Accepts, reads the request, never answers."""
    conn.settimeout(0.05)
    while not stop.is_set():
        try:
            if not conn.recv(4096):
                return
        except OSError:
            pass


def _trickle(conn, stop):
    """Answers 200 with a promised length, then one byte every 50 ms: never a stall, never done."""
    conn.settimeout(1.0)
    try:
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n")
        while not stop.wait(0.05):
            conn.sendall(b"x")
    except OSError:
        return


@pytest.fixture
def local_only(monkeypatch):
    """The download's opener: 127.0.0.1 only, never through a proxy."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def urlopen(url, timeout=None):
        assert url.startswith("http://127.0.0.1:"), f"a test tried to reach {url}"
        return opener.open(url, timeout=timeout)
    monkeypatch.setattr(mnist, "urlopen", urlopen)


@pytest.fixture
def server(request, local_only, monkeypatch):
    """A server answering as ``request.param`` does, serving as two mirrors."""
    srv = _Server(request.param)
    monkeypatch.setattr(mnist, "MIRRORS", (srv.url + "one/", srv.url + "two/"))
    yield srv
    srv.close()


def _timed(call):
    started = time.monotonic()
    with pytest.raises(DownloadError) as caught:
        call()
    return time.monotonic() - started, str(caught.value)


def test_the_defaults_bound_the_whole_download():
    assert mnist.DEADLINE_S <= 60 and mnist.READ_TIMEOUT_S < mnist.DEADLINE_S


@pytest.mark.parametrize("server", [_silent], indirect=True)
def test_a_silent_server_is_given_up_and_each_mirror_asked_once(server, tmp_path):
    seconds, text = _timed(lambda: download_mnist(tmp_path / "d", read_timeout=0.3, deadline=5))
    assert seconds < 2.0  # two mirrors x 0.3 s, not the deadline
    assert text.startswith("could not download train-images-idx3-ubyte.gz")
    assert text.count("stalled: no data for 0.3 s") == 2 and "/one/" in text and "/two/" in text
    assert "by hand" in text
    assert len(server.conns) == 2  # a stalled mirror is not asked again
    assert list((tmp_path / "d").iterdir()) == []  # no partial or temporary file


@pytest.mark.parametrize("server", [_silent], indirect=True)
def test_the_deadline_cuts_a_long_read_timeout_short(server, tmp_path):
    seconds, text = _timed(lambda: download_mnist(tmp_path / "d", read_timeout=30, deadline=0.5))
    assert seconds < 1.5
    assert "gave up after 0.5 s, the time allowed for the whole download" in text
    assert "download_mnist(deadline=...)" in text
    assert list((tmp_path / "d").iterdir()) == []


@pytest.mark.parametrize("server", [_trickle], indirect=True)
def test_a_trickling_server_is_given_up_at_the_deadline(server, tmp_path):
    """Bytes keep coming (no read ever waits long), but the whole download has a deadline."""
    seconds, text = _timed(lambda: download_mnist(tmp_path / "d", read_timeout=5, deadline=0.8))
    assert seconds < 2.0
    assert "gave up after 0.8 s" in text and "cut off" in text
    assert list((tmp_path / "d").iterdir()) == []


@pytest.mark.parametrize("server", [_silent], indirect=True)
def test_the_cli_says_it_in_one_line(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(mnist, "READ_TIMEOUT_S", 0.2)
    monkeypatch.setattr(mnist, "DEADLINE_S", 3.0)
    started = time.monotonic()
    status = cli.main(["train", "--data", str(tmp_path / "d"), "--download", "--epochs", "1"])
    assert time.monotonic() - started < 3.5
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and err[-1].startswith("fastnn train: error: could not download")
    assert "stalled: no data for 0.2 s" in err[-1]
    assert not any(line.startswith("Traceback") for line in err)
    assert list((tmp_path / "d").iterdir()) == []
