"""fastnn/files.py: reads that refuse what is not a regular file without blocking, and atomic
writes whose killed writers' temporary files are removed by the next write (never a live one's).
"""
import os
import re
import signal
import subprocess
import sys
import time

import pytest

import fastnn
from fastnn import files
from conftest import within

posix_only = pytest.mark.skipif(os.name != "posix", reason="named pipes, devices and pids as POSIX has them")


class Refused(ValueError):
    pass


def _read_all(path):
    with files.open_regular(path, Refused) as f:
        return f.read()


# ---- reading -------------------------------------------------------------------------
def test_a_regular_file_is_read(tmp_path):
    (tmp_path / "a").write_bytes(b"abc")
    assert _read_all(tmp_path / "a") == b"abc"


@posix_only
@pytest.mark.parametrize("kind, make", [
    ("a named pipe", lambda p: os.mkfifo(p)),
    ("a folder", lambda p: os.mkdir(p)),
])
def test_what_is_not_a_regular_file_is_refused_at_once(tmp_path, kind, make):
    path = tmp_path / "thing"
    make(path)
    with pytest.raises(Refused, match=f"^{re.escape(str(path))}: is {kind}, not a regular file"):
        within(5, _read_all, path)


@posix_only
def test_a_device_is_refused_before_it_is_opened():
    with pytest.raises(Refused, match="/dev/zero: is a character device"):  # would read forever
        within(5, _read_all, "/dev/zero")


@posix_only
def test_a_pipe_swapped_in_after_the_check_cannot_block(tmp_path, monkeypatch):
    regular, pipe = tmp_path / "regular", tmp_path / "pipe"
    regular.write_bytes(b"x")
    os.mkfifo(pipe)
    real_stat = os.stat
    monkeypatch.setattr(files.os, "stat", lambda p, *a, **k: real_stat(regular))  # stat saw a regular file
    with pytest.raises(Refused, match="is a named pipe, not a regular file .it changed while opened"):
        within(5, _read_all, pipe)


def test_a_missing_file_stays_pythons_own_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        _read_all(tmp_path / "absent")


# ---- temporary files of writes -------------------------------------------------------
def _temp_files(folder):
    return sorted(name for name in os.listdir(folder) if name.endswith(".tmp"))


def test_a_temp_file_names_its_target_host_and_pid(tmp_path):
    with files.atomic_writer(tmp_path / "model.npz") as f:
        seen = _temp_files(tmp_path)
        f.write(b"data")
    assert len(seen) == 1
    assert seen[0].startswith(f".model.npz.fastnn-{files._host()}-{os.getpid()}-")
    assert _temp_files(tmp_path) == [] and (tmp_path / "model.npz").read_bytes() == b"data"


def test_a_long_target_name_gives_a_short_temp_name(tmp_path):
    name = "m" * 240 + ".npz"
    with files.atomic_writer(tmp_path / name) as f:
        assert all(len(n) < 200 for n in _temp_files(tmp_path))
        f.write(b"data")
    assert os.listdir(tmp_path) == [name]


def _dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: the pid names no process (until reused, which keeps the file: safe)
    return child.pid


@posix_only
def test_only_dead_writers_temp_files_of_the_same_target_are_removed(tmp_path):
    live_child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = files._host()
        keep = [f".model.npz.fastnn-{host}-{os.getpid()}-abc123.tmp",         # this process: live
                f".model.npz.fastnn-{host}-{live_child.pid}-abc123.tmp",      # another live process
                f".model.npz.fastnn-otherhost-{_dead_pid()}-abc123.tmp",     # another host: unknown
                f".other.npz.fastnn-{host}-{_dead_pid()}-abc123.tmp",        # another target
                ".fastnn-abc123.tmp",                                        # an older fastnn's: no pid
                "model.npz.tmp"]                                             # not fastnn's
        gone = [f".model.npz.fastnn-{host}-{_dead_pid()}-abc123.tmp",
                f".model.npz.fastnn-{host}-{_dead_pid()}-x_9.tmp"]
        for name in keep + gone:
            (tmp_path / name).write_bytes(b"partial")
        with files.atomic_writer(tmp_path / "model.npz") as f:
            f.write(b"data")
        assert sorted(os.listdir(tmp_path)) == sorted(keep + ["model.npz"])
    finally:
        live_child.kill()
        live_child.wait()


SAVE_FOREVER = """
import sys
import fastnn
net = fastnn.Sequential(fastnn.Dense(1500, 1500), backend="numpy", dtype="float64", seed=0)
while True:  # 18 MB a save: the kill lands mid-save
    net.save(sys.argv[1])
"""


@posix_only
def test_writers_killed_mid_save_leave_nothing_after_the_next_save(tmp_path):
    target = tmp_path / "model.npz"
    debris, deadline = [], time.monotonic() + 60
    for _ in range(6):  # a few kills, bounded in time
        writer = subprocess.Popen([sys.executable, "-c", SAVE_FOREVER, str(target)])
        try:
            while not _temp_files(tmp_path) or not any(str(writer.pid) in n for n in _temp_files(tmp_path)):
                assert time.monotonic() < deadline and writer.poll() is None, "no save started"
                time.sleep(0.005)
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait()
        debris = _temp_files(tmp_path)
        if len(debris) >= 3:
            break
    assert debris, "no kill landed mid-save"
    net = fastnn.Sequential(fastnn.Dense(3, 2), backend="numpy", seed=0)
    net.save(target)
    assert _temp_files(tmp_path) == []
    assert fastnn.load(target).dense_layers[0].W.shape == (3, 2)
