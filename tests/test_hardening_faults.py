"""Issue 14 items 15-17 (prepare side): workers die with their parent, a full disk is one
clear line and leaves nothing partial under a final name, skipped files are named."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from predict_world import run_cli
from svdh.core.errors import OutOfSpaceError
from svdh.core.preprocess import PreprocessConfig
from svdh.data.cache import prepare


def _film(path: Path, side: int = 96) -> Path:
    y, x = np.mgrid[0:side, 0:side]
    a = 40 + 150 * np.exp(-(((x - side / 2) / (side / 5)) ** 2)) * (y > side / 6)
    Image.fromarray(a.astype(np.uint8)).save(path)
    return path


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


_SCRIPT = """
import sys
import pandas as pd
from svdh.core.preprocess import PreprocessConfig
from svdh.data.cache import prepare

if __name__ == "__main__":
    df = pd.DataFrame({"image": [sys.argv[1]] * 400})
    prepare(df, sys.argv[2], PreprocessConfig(size=64), workers=2, progress=False)
"""


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc (Linux)")
def test_prepare_workers_die_when_the_parent_is_killed(tmp_path: Path) -> None:
    image = _film(tmp_path / "big.png", side=1800)
    script = tmp_path / "run_prepare.py"
    script.write_text(_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, str(script), str(image), str(tmp_path / "cache")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        workers: set[int] = set()
        for _ in range(600):  # wait for the forkserver and its two workers
            workers = _descendants(proc.pid)
            if len(workers) >= 3 or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert len(workers) >= 3, f"workers never started: {proc.stderr.read()[-2000:]}"
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.2)
        left = [p for p in workers if _alive(p)]
    finally:
        if proc.poll() is None:
            proc.kill()
    for p in left:  # clean up before failing, so nothing outlives the test
        os.kill(p, signal.SIGKILL)
    assert not left, f"{len(left)} worker process(es) outlived their parent"


def _enospc(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_while_reserving_the_cache_is_one_line_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    df = pd.DataFrame({"image": [str(_film(tmp_path / f"{i}.png")) for i in range(3)]})
    monkeypatch.setattr(os, "posix_fallocate", _enospc)
    out = tmp_path / "cache"
    with pytest.raises(OutOfSpaceError) as info:
        prepare(df, out, PreprocessConfig(size=64), workers=1, progress=False)
    msg = str(info.value)
    assert "\n" not in msg and "no space left on the disk" in msg and str(out) in msg
    assert "memory" not in msg
    assert sorted(p.name for p in out.iterdir()) == []  # no array, no meta, no temp file


def test_disk_full_while_writing_metadata_leaves_no_temp_or_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    df = pd.DataFrame({"image": [str(_film(tmp_path / f"{i}.png")) for i in range(3)]})
    out = tmp_path / "cache"
    real = Path.write_bytes

    def half_then_full(self: Path, data: bytes) -> int:
        real(self, data[: len(data) // 2])  # a partial write, as on a full disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", half_then_full)
    with pytest.raises(
        OutOfSpaceError, match=r"no space left on the disk while writing meta\.json"
    ):
        prepare(df, out, PreprocessConfig(size=64), workers=1, progress=False)
    names = sorted(p.name for p in out.iterdir())
    assert not any(n.endswith(".tmp") for n in names) and "meta.json" not in names
    monkeypatch.undo()
    prepare(df, out, PreprocessConfig(size=64), workers=1, progress=False)  # rerun: completes
    assert (out / "meta.json").is_file()


def test_prepare_skip_invalid_names_the_skipped_files(tmp_path: Path) -> None:
    _film(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (tmp_path / "notes.png").write_text("not an image at all\n" * 10)
    (tmp_path / "s.csv").write_text(
        "image,patient_id,svdh\ngood.png,1,3\nbroken.png,2,3\nnotes.png,3,3\n"
    )
    proc = run_cli(
        "prepare",
        f"csv:{tmp_path / 's.csv'}",
        "--out",
        tmp_path / "c",
        "--size",
        64,
        "--skip-invalid",
    )
    assert proc.returncode == 0, proc.stderr
    assert "left out 2 image(s)" in proc.stderr
    assert "broken.png: " in proc.stderr and "notes.png: not an image" in proc.stderr


@pytest.fixture()
def small_disk(tmp_path: Path):
    """A real 2 MB file system (tmpfs), so the disk really fills up; needs root."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True
    )
    if r.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.parametrize("workers", [1, 2])
def test_prepare_on_a_really_full_disk(tmp_path: Path, small_disk: Path, workers: int) -> None:
    for i in range(40):
        _film(tmp_path / f"{i}.png")
    (tmp_path / "s.csv").write_text(
        "image,patient_id,svdh\n" + "\n".join(f"{i}.png,p{i},3" for i in range(40)) + "\n"
    )
    out = small_disk / "cache"
    proc = run_cli(
        "prepare", f"csv:{tmp_path / 's.csv'}", "--out", out, "--size", 256, "--workers", workers
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "no space left on the disk" in last, proc.stderr[-800:]
    assert "memory" not in last and "Traceback" not in proc.stderr
    leftovers = [p.name for p in out.iterdir()] if out.exists() else []
    assert not any(n.endswith(".tmp") for n in leftovers) and "images.npy" not in leftovers


def test_predict_output_on_a_full_disk_leaves_no_empty_or_cut_file(small_disk: Path) -> None:
    """Item 16: svdh predict -o on a full disk left a 0-byte CSV; now one line, no file."""
    from svdh.inference.prediction import Prediction
    from svdh.inference.writers import ResultWriter

    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (2 * 1024 * 1024 - 16 * 1024))  # leave ~16 KB free
    out = small_disk / "predictions.csv"
    with pytest.raises(OutOfSpaceError) as info:
        w = ResultWriter(out, 7, ["m"])
        for i in range(5000):  # ~100 bytes a row: more than the disk holds
            w.write(Prediction.failed(f"image-{i:05d}.png", "not an image " * 5))
        w.close([], {})
    assert "no space left on the disk while writing predictions.csv" in str(info.value)
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]  # no csv, no temp


def test_predict_output_appears_only_when_complete(tmp_path: Path) -> None:
    from svdh.inference.prediction import Prediction
    from svdh.inference.writers import ResultWriter

    out = tmp_path / "p.csv"
    w = ResultWriter(out, 7, ["m"])
    w.write(Prediction.failed("a.png", "not an image"))
    assert not out.exists()  # still streaming into a temporary file
    assert w.close([], {}) == [out] and out.read_text().count("\n") == 2
    assert [p.name for p in tmp_path.iterdir()] == ["p.csv"]
