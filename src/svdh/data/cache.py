"""The preprocessed-image cache: decode and preprocess every image once, read it many times.

A cache is a folder::

    images.npy     uint8 N x S x S, memory-mapped (row i = manifest row with cache_index i)
    manifest.csv   the manifest rows (in order) plus ``cache_index``
    geometry.npy   int32 N x 9: the preprocessing Transform of each row
    matrix.npy     float64 N x 6: the 2 x 3 affine from the film as given to the pixels that
                   Transform crops (identity unless the canonical stage cut or turned a hand)
    keys.npy       uint64 N: per-row key of the finished row (0 = not done yet)
    meta.json      preprocessing config, source, input fingerprint, status, failures

:func:`prepare` fills it in parallel worker processes that write straight into the
memory-mapped array. With ``cfg.canonical`` each row's input is the hand
:func:`svdh.core.canonical.model_inputs` gives prediction, byte for byte; a both-hands film
(two rows, ``film_side`` both, read by :func:`svdh.data.sources.load_source` with
``split_both_hands``) gives each row its own hand, the one whose side the canonical stage
gives as the row's ``side``. Each row's key hashes the image path, size and modification
time and the preprocessing parameters, so a rerun redoes only rows whose input changed: a
second run on the same inputs does nothing (idempotent), a run killed half-way continues
where it stopped (resumable), and a changed config or row count rebuilds the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from svdh.core.errors import (
    BadConfigError,
    BadDatasetError,
    SvdhError,
    is_out_of_space,
    out_of_space,
)
from svdh.core.files import atomic_write_text, write_json
from svdh.core.preprocess import PreprocessConfig, Transform
from svdh.data.manifest import (
    COLUMNS,
    FILM_BOTH,
    STR_COLUMNS,
    Problem,
    describe,
    read_manifest_csv,
    whole_film_problems,
)

#: 2: ``matrix.npy`` (film -> hand pixels) beside the crop's geometry
CACHE_FORMAT = 2
_GEOMETRY_FIELDS = ("x0", "y0", "side", "width", "height", "bx0", "by0", "bx1", "by1")


@dataclass
class Cache:
    """An opened cache: ``images`` (read-only uint8 memmap N x S x S), ``manifest`` (with
    ``cache_index``, the row of ``images`` for each manifest row), ``config``, ``meta``."""

    path: Path
    images: np.ndarray
    manifest: pd.DataFrame
    config: PreprocessConfig
    meta: dict[str, Any]
    geometry: np.ndarray
    #: N x 6: per row the 2 x 3 affine from the film as given to the pixels ``transform`` crops
    matrix: np.ndarray

    def __len__(self) -> int:
        return len(self.manifest)

    @property
    def images_path(self) -> Path:
        """``images.npy``: what training memory-maps (one mapping per loader worker)."""
        return self.path / "images.npy"

    def batch(self, cache_indices: Iterable[int]) -> np.ndarray:
        """Images for the given cache indices (in that order), as one uint8 array B x S x S.

        Reads in ascending order (sequential access on disk), then restores the order asked.
        """
        idx = np.asarray(
            list(cache_indices) if not isinstance(cache_indices, np.ndarray) else cache_indices,
            dtype=np.int64,
        )
        order = np.argsort(idx, kind="stable")
        out = np.empty((len(idx), *self.images.shape[1:]), dtype=np.uint8)
        out[order] = self.images[idx[order]]
        return out

    def transform(self, cache_index: int) -> Transform:
        """The crop :class:`Transform` that produced row ``cache_index``: it maps the pixels
        the film's ``matrix`` leads to (the cut and turned hand of a canonical cache), not the
        film's own; :meth:`film_to_input` maps film points."""
        g = [int(v) for v in self.geometry[int(cache_index)]]
        return Transform(g[0], g[1], g[2], self.config.size, g[3], g[4], (g[5], g[6], g[7], g[8]))

    def film_to_input(self, cache_index: int, xy: Any) -> np.ndarray:
        """Film (x, y) pixel coordinates (... x 2) onto row ``cache_index``'s image, as
        :meth:`svdh.core.canonical.ModelInput.film_to_input` maps them for prediction (through
        the cut and turn of a canonical hand, then the crop)."""
        m = np.asarray(self.matrix[int(cache_index)], dtype=np.float64).reshape(2, 3)
        p = np.asarray(xy, dtype=np.float64)
        return self.transform(cache_index).map_points(p @ m[:, :2].T + m[:, 2])


# --------------------------------------------------------------------------- prepare


_ARRAYS = ("images.npy", "keys.npy", "geometry.npy", "matrix.npy")


def prepare(
    source: str | os.PathLike[str] | pd.DataFrame,
    out_dir: str | os.PathLike[str],
    cfg: PreprocessConfig | None = None,
    workers: int | None = None,
    *,
    skip_invalid: bool = False,
    progress: bool = True,
    max_pixels: int | None = None,
) -> Path:
    """Build (or finish, or reuse) the cache of ``source`` in ``out_dir``; returns its path.

    ``source``: a source spec (``ra2-dream:DIR``...) or a manifest DataFrame (``image`` column
    at least). ``workers``: processes (default: CPU count, at most 8; 1 runs in-process).
    Images that cannot be decoded raise one error listing them after every other row is
    done, unless ``skip_invalid`` (then they are left out of ``manifest.csv``).
    """
    cfg = cfg or PreprocessConfig()
    out = Path(out_dir).expanduser().resolve()
    df, spec = _source_frame(source, skip_invalid, cfg.canonical)
    n = len(df)
    if n == 0:
        raise BadDatasetError(f"{spec}: no images to prepare")
    expected, stat_problems = _row_keys(df, cfg, max_pixels)
    meta_path = out / "meta.json"
    old = _read_meta(meta_path) if meta_path.exists() else None
    if old is None:
        _new_folder(out)
    (images, keys, geometry, matrix), old = _open_arrays(out, old, n, cfg)
    failed = _known_failures(old, expected, stat_problems)
    todo = [i for i in range(n) if keys[i] != expected[i] and str(i) not in failed]
    meta = {
        "format": CACHE_FORMAT,
        "svdh_version": _version(),
        "source": spec,
        "n": n,
        "size": cfg.size,
        "config": cfg.to_dict(),
        "max_pixels": max_pixels,
        "fingerprint": hashlib.sha256(
            expected.tobytes() + json.dumps(cfg.to_dict(), sort_keys=True).encode()
        ).hexdigest(),
        "status": "building",
        "created": (old or {}).get("created", _now()),
        "updated": _now(),
        "failed": failed,
    }
    if todo:
        _write_json(meta_path, meta)
        images.flush()
        del images  # workers open their own mapping
        try:
            new_failed = _run(
                out / "images.npy", todo, _inputs(df), cfg, max_pixels, expected,
                keys, (geometry, matrix), workers, progress,
            )  # fmt: skip
        finally:
            keys.flush()
            geometry.flush()
            matrix.flush()
        for i, msg in new_failed.items():
            failed[str(i)] = {"key": int(expected[i]), "error": msg}
    for k, v in failed.items():  # which file: --skip-invalid names what it left out
        v.setdefault("image", str(df["image"].iat[int(k)]))
    if failed and not skip_invalid:
        _write_json(meta_path, {**meta, "failed": failed, "updated": _now()})
    _say_failures(spec, df, failed, skip_invalid, bool(todo))
    _finish(out, df, meta, failed, old, bool(todo))
    return out


def _say_failures(
    spec: str, df: pd.DataFrame, failed: dict[str, dict[str, Any]], skip: bool, built: bool
) -> None:
    """The images that could not be prepared, in one line: an error, or with ``skip`` (they are
    left out) a warning, given once, when the cache is built (meta.json keeps the list)."""
    problems = [
        Problem(Path(df["image"].iat[int(i)]).name, v["error"])
        for i, v in sorted(failed.items(), key=lambda kv: int(kv[0]))
    ]
    if problems and not skip:
        raise BadDatasetError(
            f"{spec}: {len(problems)} image(s) could not be prepared: {describe(problems)}; fix or "
            "remove them (rerunning redoes only those), or pass --skip-invalid to leave them out"
        )
    if problems and built:
        logging.getLogger("svdh.data").warning(
            "%s: left out %d image(s) that could not be prepared: %s",
            spec, len(problems), describe(problems),
        )  # fmt: skip


def _new_folder(out: Path) -> None:
    """Create the cache folder. One holding only this module's own files (a first run that
    stopped before meta.json was written, e.g. on a full disk) is rebuilt; anything else is
    refused."""
    own = {*_ARRAYS, "manifest.csv"}
    if out.exists() and any(f.name not in own for f in out.iterdir()):
        raise BadConfigError(
            f"{out} is not empty and holds no svdh cache (no meta.json); choose a new or empty folder"
        )
    out.mkdir(parents=True, exist_ok=True)


def _source_frame(
    source: str | os.PathLike[str] | pd.DataFrame, skip_invalid: bool, canonical: bool = False
) -> tuple[pd.DataFrame, str]:
    """The rows to prepare and the source's name. For a canonical cache a both-hands film is
    one row per hand (``split_both_hands``); a manifest given as a DataFrame must be so already
    (a whole-film ``both`` row is refused, or left out with ``skip_invalid``)."""
    if not isinstance(source, pd.DataFrame):
        from svdh.data.sources import load_source

        df = load_source(source, skip_invalid=skip_invalid, split_both_hands=canonical)
        return df, str(df.attrs.get("source", source))
    df, spec = _normalise_frame(source), str(source.attrs.get("source", "dataframe"))
    problems = whole_film_problems(df) if canonical else []
    if problems and not skip_invalid:
        raise BadDatasetError(f"{spec}: {len(problems)} problem(s): {describe(problems)}")
    if problems:
        logging.getLogger("svdh.data").warning(
            "%s: left out %d row(s): %s", spec, len(problems), describe(problems)
        )
        df = df.drop(index=[p.index for p in problems]).reset_index(drop=True)
    return df, spec


def _inputs(df: pd.DataFrame) -> list[tuple[str, str]]:
    """(image path, hand) of each row: hand L or R where the row is that hand of a both-hands
    film (``film_side`` both), else empty (the film's one hand, or the whole film)."""
    hands = [
        str(sd) if fs == FILM_BOTH else ""
        for sd, fs in zip(df["side"], df["film_side"], strict=True)
    ]
    return list(zip(df["image"].astype(str), hands, strict=True))


def _open_arrays(
    out: Path, old: dict[str, Any] | None, n: int, cfg: PreprocessConfig
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], dict[str, Any] | None]:
    """The cache's memory-mapped arrays: those of a compatible earlier build (continued), or
    fresh ones (``old`` then becomes None: nothing of the earlier build counts)."""
    size = cfg.size
    shapes = ((n, size, size), (n,), (n, len(_GEOMETRY_FIELDS)), (n, 6))
    compatible = (
        old is not None
        and old.get("format") == CACHE_FORMAT
        and old.get("n") == n
        and old.get("config") == cfg.to_dict()
        and all((out / f).exists() for f in _ARRAYS)
    )
    if compatible:
        arrays = tuple(np.load(out / f, mmap_mode="r+") for f in _ARRAYS)
        if tuple(a.shape for a in arrays) == shapes:
            return arrays, old  # type: ignore[return-value]
        del arrays
    for f in (*_ARRAYS, "manifest.csv", "meta.json"):
        (out / f).unlink(missing_ok=True)
    dtypes = (np.uint8, np.uint64, np.int32, np.float64)
    try:
        arrays = tuple(
            np.lib.format.open_memmap(out / f, mode="w+", dtype=dt, shape=shape)
            for f, dt, shape in zip(_ARRAYS, dtypes, shapes, strict=True)
        )
        for f in _ARRAYS:
            _reserve(out / f)
    except OSError as exc:
        for f in _ARRAYS:
            (out / f).unlink(missing_ok=True)
        if is_out_of_space(exc):
            raise out_of_space(out, f"the image cache ({n * size * size / 1e6:,.0f} MB)") from None
        raise
    return arrays, None  # type: ignore[return-value]


def _reserve(path: Path) -> None:
    """Allocate the file's blocks now: a full disk is then one clear error here, never a
    worker killed by SIGBUS half-way through writing into a sparse memory map."""
    if not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        if is_out_of_space(exc):
            raise
        # EOPNOTSUPP and friends: the file system cannot reserve; write as before.
    finally:
        os.close(fd)


def _known_failures(
    old: dict[str, Any] | None, expected: np.ndarray, stat_problems: dict[int, str]
) -> dict[str, dict[str, Any]]:
    """Failures are remembered with the key of the input that failed: the same unchanged file
    is not retried, a replaced one is."""
    n = len(expected)
    failed = {
        k: v
        for k, v in dict((old or {}).get("failed", {})).items()
        if int(k) < n and int(v.get("key", 0)) == int(expected[int(k)])
    }
    for i, msg in stat_problems.items():
        failed[str(i)] = {"key": int(expected[i]), "error": msg}
    return failed


def _finish(
    out: Path,
    df: pd.DataFrame,
    meta: dict[str, Any],
    failed: dict[str, dict[str, Any]],
    old: dict[str, Any] | None,
    worked: bool,
) -> None:
    """Write ``manifest.csv`` (without failed rows) and the completed ``meta.json``, each only
    when it changed (a rerun on unchanged inputs writes nothing)."""
    n = len(df)
    manifest = df.copy()
    manifest["cache_index"] = np.arange(n, dtype=np.int64)
    if failed:
        manifest = manifest.drop(index=[int(i) for i in failed]).reset_index(drop=True)
    manifest.attrs = {}
    text = manifest.to_csv(index=False)
    digest = hashlib.sha256(text.encode()).hexdigest()
    if old is None or old.get("manifest_sha256") != digest or not (out / "manifest.csv").exists():
        atomic_write_text(out / "manifest.csv", text)
    meta.update(status="complete", failed=failed, manifest_sha256=digest, n_images=len(manifest))
    if (
        worked
        or old is None
        or {k: v for k, v in old.items() if k != "updated"}
        != {k: v for k, v in meta.items() if k != "updated"}
    ):
        meta["updated"] = _now()
        _write_json(out / "meta.json", meta)


def _normalise_frame(source: pd.DataFrame) -> pd.DataFrame:
    if "image" not in source:
        raise BadDatasetError("the manifest DataFrame has no 'image' column")
    df = (
        source.drop(columns=[c for c in ("cache_index",) if c in source])
        .reset_index(drop=True)
        .copy()
    )
    for c in COLUMNS:
        if c not in df:
            df[c] = "" if c in STR_COLUMNS else np.nan
    if (df["image_id"] == "").all():
        df["image_id"] = [Path(p).stem for p in df["image"]]
    return df


def _row_keys(
    df: pd.DataFrame, cfg: PreprocessConfig, max_pixels: int | None
) -> tuple[np.ndarray, dict[int, str]]:
    """Per-row key of (path, size, mtime, config, pixel limit, and the hand of a both-hands
    film); never 0. Unreadable paths listed."""
    params = json.dumps({"cfg": cfg.to_dict(), "max_pixels": max_pixels}, sort_keys=True)
    keys = np.empty(len(df), dtype=np.uint64)
    problems: dict[int, str] = {}
    for i, (path, hand) in enumerate(_inputs(df)):
        try:
            st = os.stat(path)
            ident = f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{params}"
            ident += f"\0hand {hand}" if hand else ""  # other rows' keys stay as they were
        except OSError as exc:
            ident = f"{path}\0missing\0{params}"
            problems[i] = f"cannot read {path} ({exc.strerror or exc})"
        k = int.from_bytes(hashlib.blake2b(ident.encode(), digest_size=8).digest(), "little")
        keys[i] = k or 1
    return keys, problems


def _run(
    images_path: Path,
    todo: list[int],
    paths: list[tuple[str, str]],
    cfg: PreprocessConfig,
    max_pixels: int | None,
    expected: np.ndarray,
    keys: np.ndarray,
    geometry: tuple[np.ndarray, np.ndarray],
    workers: int | None,
    progress: bool,
) -> dict[int, str]:
    """Preprocess rows ``todo`` (``paths``: image and hand of each row); mark each finished
    row's key as soon as its chunk returns."""
    workers = _workers(workers, len(todo))
    chunk = int(np.clip(len(todo) // (workers * 8) or 1, 8, 256))
    chunks = [todo[s : s + chunk] for s in range(0, len(todo), chunk)]
    failed: dict[int, str] = {}

    def done(results: list[_Result]) -> None:
        for i, geo, err in results:
            if err is not None or geo is None:
                failed[i] = err or "not prepared"
            else:
                geometry[0][i], geometry[1][i] = geo
                keys[i] = expected[i]

    ctx = _mp_context() if workers > 1 else None
    bar = _progress(progress, len(todo))
    try:
        if workers <= 1 or ctx is None:
            _init_worker(str(images_path), cfg.to_dict(), max_pixels)
            for c in chunks:
                res = _work([(i, *paths[i]) for i in c])
                done(res)
                bar.advance(len(c))
            return failed
        with ProcessPoolExecutor(
            max_workers=workers,
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(str(images_path), cfg.to_dict(), max_pixels, os.getpid()),
        ) as pool:
            pending = set()
            it = iter(chunks)
            try:
                # Keep a bounded number of chunks in flight so an interruption loses little.
                for c in it:
                    pending.add(pool.submit(_work, [(i, *paths[i]) for i in c]))
                    if len(pending) >= 3 * workers:
                        break
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        try:
                            res = fut.result()
                        except BrokenProcessPool:
                            if _disk_nearly_full(images_path.parent):
                                raise out_of_space(images_path.parent, "the cache") from None
                            raise BadConfigError(
                                "a worker process died (killed, or out of memory); finished "
                                "images are kept: rerun to continue, with fewer --workers"
                            ) from None
                        done(res)
                        bar.advance(len(res))
                        nxt = next(it, None)
                        if nxt is not None:
                            pending.add(pool.submit(_work, [(i, *paths[i]) for i in nxt]))
            except BaseException:
                for fut in pending:
                    fut.cancel()
                pool.shutdown(wait=False, cancel_futures=True)
                raise
        return failed
    finally:
        bar.close()


def _workers(workers: int | None, n_todo: int) -> int:
    if workers is None:
        workers = min(8, os.cpu_count() or 1)
    if workers < 1:
        raise BadConfigError(f"--workers must be at least 1, got {workers}")
    # Starting processes costs ~0.3 s each: not worth it for a handful of images.
    return 1 if n_todo < 16 else int(workers)


def _mp_context() -> mp.context.BaseContext | None:
    """Workers start from a clean process, never forked from this one: after OpenCV, OpenMP
    (torch) or BLAS have started threads here, a forked child can deadlock on a lock one of
    those threads held. Linux: forkserver, preloading only this module; elsewhere spawn.

    Both re-import the main script in each worker; where it is not a file (a script piped to
    ``python -``), None: the caller then works in this process.
    """
    main = sys.modules.get("__main__")
    main_file = getattr(main, "__file__", None)
    if (
        main_file is not None
        and getattr(getattr(main, "__spec__", None), "name", None) is None
        and not os.path.isfile(main_file)
    ):
        return None
    if sys.platform.startswith("linux"):
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["svdh.data.cache"])
        return ctx
    return mp.get_context("spawn")


# --------------------------------------------------------------------------- worker side

_STATE: dict[str, Any] = {}


def _disk_nearly_full(folder: Path) -> bool:
    import shutil

    try:
        return shutil.disk_usage(folder).free < 8 << 20
    except OSError:
        return False


def _die_with_parent(parent_pid: int) -> None:
    """End this worker when the process that started the pool dies, even by kill -9.

    Linux: PR_SET_PDEATHSIG on the worker's own parent (the forkserver, which exits when the
    pool's owner is gone); everywhere: a daemon thread that checks the owner every second.
    """
    import signal
    import threading

    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(parent_pid, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:
                pass  # alive, owned by someone else (cannot happen for our parent)

    threading.Thread(target=watch, name="svdh-parent-watch", daemon=True).start()


def _init_worker(
    images_path: str, cfg: dict[str, Any], max_pixels: int | None, parent_pid: int | None = None
) -> None:
    import cv2

    if parent_pid is not None:
        _die_with_parent(parent_pid)

    cv2.setNumThreads(1)  # one process per core already
    _STATE.clear()
    _STATE.update(
        images=np.load(images_path, mmap_mode="r+"),
        cfg=PreprocessConfig.from_dict(cfg),
        max_pixels=max_pixels,
    )


#: (row, (geometry, film matrix), error) of one prepared row
_Result = tuple[int, tuple[list[int], list[float]] | None, str | None]


def _film_input(
    rad: Any, cfg: PreprocessConfig, hand: str, memo: dict[str, Any]
) -> tuple[np.ndarray, Transform, np.ndarray]:
    """A row's model input, its crop transform and the 2 x 3 film -> pixels matrix.

    Without ``cfg.canonical``, a film's row: :func:`~svdh.core.preprocess.preprocess` of the
    whole film (as older models were trained). Otherwise the hand
    :func:`svdh.core.canonical.model_inputs` gives prediction (a refused film is an error): the
    film's one hand, or for ``hand`` L/R the hand of a both-hands film whose side the canonical
    stage gives as that (by the hand's place on the film, unless the DICOM laterality says
    otherwise; cut out unturned without ``cfg.canonical``, as prediction does then). ``memo``
    keeps the last film's hands, so the two rows of a film are read and turned once.
    """
    from svdh.core.preprocess import preprocess

    if not cfg.canonical and not hand:
        x, t = preprocess(rad, cfg, return_transform=True)
        return x, t, np.eye(2, 3)
    hands = memo.get("hands")
    if hands is None:
        hands = memo["hands"] = _canonical_hands(rad, cfg)
    if hands[0].x is None:
        raise BadDatasetError(f"refused: {hands[0].decision.reason}")
    if not hand and len(hands) > 1:
        raise BadDatasetError(
            f"the canonical stage found {len(hands)} hands on a film labelled as one hand; "
            "label it a both-hands film (side both, each hand's score) or leave it out"
        )
    if not hand:
        return hands[0].x, hands[0].transform, hands[0].matrix
    found = [h for h in hands if h.decision.side == hand and h.x is not None]
    if len(hands) != 2 or len(found) != 1:
        sides = ", ".join(f"{h.decision.side} ({h.decision.side_source})" for h in hands)
        raise BadDatasetError(
            f"the canonical stage found {len(hands)} hand(s) on this both-hands film, sided "
            f"{sides or 'none'}; expected one L and one R"
        )
    return found[0].x, found[0].transform, found[0].matrix


def _canonical_hands(rad: Any, cfg: PreprocessConfig) -> list[Any]:
    """:func:`~svdh.core.canonical.model_inputs` of a film, with its DICOM laterality as the
    side hint (a both-hands film's file name says nothing of either hand's side)."""
    from svdh.core.canonical import SideHints, model_inputs
    from svdh.core.hands import side_or_none

    dicom = side_or_none((getattr(rad, "meta", None) or {}).get("laterality"))
    return model_inputs(rad, cfg, SideHints(dicom=dicom if dicom in ("L", "R") else None))


def _work(items: list[tuple[int, str, str]]) -> list[_Result]:
    from svdh.core.io import read_radiograph

    images, cfg = _STATE["images"], _STATE["cfg"]
    out: list[_Result] = []
    memo: dict[str, Any] = {}
    for i, path, hand in items:
        try:
            if memo.get("path") != path:  # the rows of one film follow each other
                memo.clear()
                memo["rad"] = read_radiograph(path, max_pixels=_STATE["max_pixels"])
                memo["path"] = path
            arr, t, mat = _film_input(memo["rad"], cfg, hand, memo)
        except SvdhError as exc:
            msg = str(exc).removeprefix(f"{path}: ")
            out.append((i, None, f"{_HAND_WORDS.get(hand, '')}{msg}"))
            continue
        except Exception as exc:  # an unexpected decoder failure must not kill the whole run
            out.append((i, None, f"{type(exc).__name__}: {exc}"))
            continue
        images[i] = arr
        geo = [t.x0, t.y0, t.side, t.width, t.height, *t.box]
        out.append((i, (geo, [float(v) for v in np.asarray(mat).reshape(-1)]), None))
    images.flush()
    return out


_HAND_WORDS = {"L": "left hand of the film: ", "R": "right hand of the film: "}


# --------------------------------------------------------------------------- reading


def open_cache(path: str | os.PathLike[str]) -> Cache:
    """Open a finished cache written by :func:`prepare`."""
    root = Path(path).expanduser()
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        raise BadDatasetError(
            f"{root}: not a svdh cache (no meta.json); build one with svdh prepare"
        )
    meta = _read_meta(meta_path)
    if meta.get("format") != CACHE_FORMAT:
        raise BadDatasetError(
            f"{root}: cache format {meta.get('format')} is not this svdh's {CACHE_FORMAT}; rerun svdh prepare"
        )
    if meta.get("status") != "complete":
        raise BadDatasetError(
            f"{root}: the cache is incomplete (interrupted or with failed images); rerun svdh prepare to finish it"
        )
    try:
        images = np.load(root / "images.npy", mmap_mode="r")
        geometry = np.load(root / "geometry.npy", mmap_mode="r")
        matrix = np.load(root / "matrix.npy", mmap_mode="r")
        manifest = read_manifest_csv(root / "manifest.csv")
    except (OSError, ValueError) as exc:
        raise BadDatasetError(
            f"{root}: damaged cache ({exc}); delete the folder and rerun svdh prepare"
        ) from None
    if "cache_index" not in manifest or images.ndim != 3:
        raise BadDatasetError(
            f"{root}: damaged cache (manifest or images malformed); rerun svdh prepare"
        )
    manifest["cache_index"] = manifest["cache_index"].astype(np.int64)
    if len(manifest) and int(manifest["cache_index"].max()) >= len(images):
        raise BadDatasetError(f"{root}: manifest.csv points past images.npy; rerun svdh prepare")
    manifest.attrs["source"] = meta.get("source", "")
    config = PreprocessConfig.from_dict(meta["config"])
    return Cache(root, images, manifest, config, meta, geometry, matrix)


def open_prepared_cache(
    path: str | os.PathLike[str], cfg: PreprocessConfig, source: str = ""
) -> Cache:
    """The cache ``svdh prepare --out PATH`` built, checked against the preprocessing (and,
    when given, the source) a run asks for; a mismatch is one line saying what differs."""
    cache = open_cache(path)
    want, have = cfg.to_dict(), cache.config.to_dict()
    diff = [f"{k} {have.get(k)} (asked {v})" for k, v in want.items() if have.get(k) != v]
    if diff:
        raise BadConfigError(
            f"{cache.path}: prepared with other preprocessing: {', '.join(diff)}; train with "
            "the options it was prepared with, or prepare a new cache"
        )
    if source:
        from svdh.data.sources import parse_spec

        prepared = str(cache.meta.get("source", ""))
        try:
            same = parse_spec(prepared) == parse_spec(source)
        except BadDatasetError:  # the prepared source moved away: the images are in the cache
            same = True
        if not same:
            raise BadConfigError(
                f"{cache.path}: prepared from {cache.meta.get('source')!r}, not {source!r}; "
                "give the same source, or prepare a cache of this one"
            )
    return cache


def ensure_cache(
    source: str | os.PathLike[str] | pd.DataFrame,
    size: int,
    cache_root: str | os.PathLike[str] | None = None,
    *,
    cfg: PreprocessConfig | None = None,
    clahe: bool = False,
    workers: int | None = None,
    skip_invalid: bool = False,
    progress: bool = True,
) -> Cache:
    """A ready cache for ``source`` at ``size`` px, built once under ``cache_root``.

    The folder name is derived from the source and the preprocessing config, so each
    combination has its own cache; ``cache_root`` defaults to ``$SVDH_CACHE_DIR`` or
    ``~/.cache/svdh``. ``cfg`` overrides ``size``/``clahe`` when given.
    """
    cfg = cfg or PreprocessConfig(size=size, clahe=clahe)
    root = Path(
        cache_root or os.environ.get("SVDH_CACHE_DIR") or Path.home() / ".cache" / "svdh"
    ).expanduser()
    if isinstance(source, pd.DataFrame):
        label = str(source.attrs.get("source", "dataframe"))
        ident = label + "\0" + "\0".join(source["image"].astype(str))
    else:
        from svdh.data.sources import parse_spec

        kind, path = parse_spec(source)
        label = f"{kind}:{path}"
        ident = label
    digest = hashlib.sha1((ident + json.dumps(cfg.to_dict(), sort_keys=True)).encode()).hexdigest()[
        :10
    ]
    slug = "".join(
        ch if ch.isalnum() or ch in "-_" else "-"
        for ch in label.split(":", 1)[0] + "-" + Path(label.split(":", 1)[-1]).name
    )
    out = root / f"{slug.strip('-')}-{cfg.size}px-{digest}"
    # Processes started together (torchrun nodes sharing a file system, or a local launch)
    # must not build one cache at once: the first builds it, the others then find it ready.
    from filelock import FileLock

    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        prepare(source, out, cfg, workers, skip_invalid=skip_invalid, progress=progress)
    return open_cache(out)


# --------------------------------------------------------------------------- small helpers


class _NoBar:
    def advance(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


class _RichBar:
    def __init__(self, total: int) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._p = Progress(
            TextColumn("preparing"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._p.start()
        self._task = self._p.add_task("prepare", total=total)

    def advance(self, n: int) -> None:
        self._p.advance(self._task, n)

    def close(self) -> None:
        self._p.stop()


def _progress(enabled: bool, total: int) -> _NoBar | _RichBar:
    return _RichBar(total) if enabled else _NoBar()


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BadDatasetError(
            f"{path}: unreadable cache metadata ({exc}); delete the folder and rerun svdh prepare"
        ) from None


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    write_json(path, obj, sort_keys=True)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _version() -> str:
    from svdh import __version__

    return __version__


__all__ = ["Cache", "prepare", "open_cache", "ensure_cache"]
