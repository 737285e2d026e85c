"""Upload benchmark: memory and latency of concurrent 6300×6300 PNG uploads through the Generate tab's photo path.

    python benchmarks/bench_uploads.py                 # 4 concurrent uploads, then the full-size path once
    python benchmarks/bench_uploads.py --uploads 8 --no-full-size

Each upload is a cheap file (a flat 6300×6300 PNG with one portrait pasted in, ~40 MP, a few hundred KB) that
goes through ``decode_upload`` (decoded, then reduced to 2048 px) and ``people_in_photo`` (faces found on a
bounded copy by the app's face analyzer: dlib in a process of its own). Side by side: the same photo decoded and
searched at full size (the path before bounded decoding). Prints the peak resident memory of this process and
the analyzer's process above their idle level, per-upload latency and CPU (both processes); no verdicts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUICK_ARGS = ["--no-full-size"]


def _tree():
    import psutil

    me = psutil.Process()
    return [me, *me.children(recursive=True)]


def tree_cpu_s() -> float:
    """CPU seconds used so far by this process and its live children (the face analysis process)."""
    return sum(p.cpu_times().user + p.cpu_times().system for p in _tree())


class PeakRss:
    """Samples the resident memory of this process and its children every 10 ms; ``peak_mb`` is the highest
    above the start."""

    def __init__(self):
        self.base = self._rss()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _rss() -> int:
        return sum(p.memory_info().rss for p in _tree())

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.01)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def make_photo(folder: Path, side: int) -> Path:
    """A flat ``side``×``side`` PNG with one bundled portrait pasted in."""
    from PIL import Image

    from idglow.faces.dlib_backend import DlibAnalyzer
    from idglow.samples import write_sample_portraits

    portrait = Image.open(write_sample_portraits(folder / "samples", DlibAnalyzer())[0]).convert("RGB")
    canvas = Image.new("RGB", (side, side), (128, 128, 128))
    canvas.paste(portrait.resize((side // 5, side // 5)), (side // 2, side // 3))
    path = folder / "big.png"
    canvas.save(path, optimize=True)
    return path


def bounded_path(path: Path, analyzer) -> float:
    """Wall seconds of one upload."""
    from annotation.generation.reference_faces import people_in_photo
    from annotation.privacy.uploads import decode_upload

    start = time.perf_counter()
    image = decode_upload(path)
    people = people_in_photo(analyzer, path.name, image)
    assert len(people) == 1
    return time.perf_counter() - start


def full_size_path(path: Path, analyzer) -> float:
    """Wall seconds of one upload decoded and searched at full size."""
    from idglow.images import decode_image

    start = time.perf_counter()
    image = decode_image(path)
    faces = analyzer.detect(image)
    assert len(faces) == 1
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    """Run the bounded uploads concurrently, then the full-size path once; print one line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=4, help="concurrent uploads")
    parser.add_argument("--side", type=int, default=6300)
    parser.add_argument("--no-full-size", action="store_true", help="skip the full-size comparison")
    args = parser.parse_args(argv)

    from annotation.ui.wiring import face_analyzer_for_the_server
    from idglow.loading import ModelSettings

    with tempfile.TemporaryDirectory() as tmp:
        path = make_photo(Path(tmp), args.side)
        analyzer = face_analyzer_for_the_server(ModelSettings())
        bounded_path(path, analyzer)  # warm-up (model files loaded)
        cpu = tree_cpu_s()
        with PeakRss() as rss, ThreadPoolExecutor(args.uploads) as pool:
            started = time.perf_counter()
            latencies = list(pool.map(lambda _: bounded_path(path, analyzer), range(args.uploads)))
            wall = time.perf_counter() - started
        cpu_each = (tree_cpu_s() - cpu) / args.uploads
        print(f"bounded: {args.uploads} concurrent {args.side}x{args.side} PNG uploads "
              f"({path.stat().st_size / 1024:.0f} KB each): peak +{rss.peak_mb:.0f} MB RSS, latency max "
              f"{max(latencies):.2f} s, mean {statistics.mean(latencies):.2f} s, all done in {wall:.2f} s; CPU "
              f"{cpu_each:.2f} s per upload (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
        if not args.no_full_size:
            cpu = tree_cpu_s()
            with PeakRss() as rss_full:
                full = full_size_path(path, analyzer)
            full_cpu = tree_cpu_s() - cpu
            print(f"full size: one upload: peak +{rss_full.peak_mb:.0f} MB RSS, {full:.2f} s, CPU {full_cpu:.2f} s; "
                  f"a bounded upload needs {cpu_each / full_cpu:.2f}x the CPU and "
                  f"{rss.peak_mb / args.uploads / max(rss_full.peak_mb, 1):.2f}x the memory of a full-size one")
        analyzer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
