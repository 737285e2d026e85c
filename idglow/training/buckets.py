"""Aspect-ratio buckets: images of similar shape are resized to one of a few sizes of about the same pixel
count, and every batch holds a single bucket (so no padding and no distortion)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

#: Pixel sizes must be multiples of this: VAE ×8 and 2×2 packing of FLUX latents.
SIZE_MULTIPLE = 16


def make_buckets(resolution: int = 1024, *, min_ratio: float = 0.5, max_ratio: float = 2.0,
                 step: int = 64, multiple: int = SIZE_MULTIPLE) -> list[tuple[int, int]]:
    """(width, height) sizes with about ``resolution²`` pixels, aspect ratios (w/h) within
    [min_ratio, max_ratio], sides multiples of ``multiple`` (and stepped by ``step``). Sorted by ratio."""
    if resolution % multiple:
        raise ValueError(f"resolution={resolution} is not a multiple of {multiple}")
    if not 0 < min_ratio <= 1 <= max_ratio:
        raise ValueError(f"need 0 < min_ratio={min_ratio} <= 1 <= max_ratio={max_ratio}")
    area = resolution * resolution
    step = max(multiple, step - step % multiple)
    buckets = {(resolution, resolution)}
    width = resolution
    while True:
        width += step
        height = int(area / width) // multiple * multiple
        if height < multiple or width / height > max_ratio:
            break
        buckets.add((width, height))
        buckets.add((height, width))
    return sorted((b for b in buckets if min_ratio <= b[0] / b[1] <= max_ratio), key=lambda b: b[0] / b[1])


def nearest_bucket(width: int, height: int, buckets: Sequence[tuple[int, int]]) -> int:
    """Index of the bucket whose aspect ratio is closest (in log space) to width/height."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size {width}x{height} is empty")
    target = math.log(width / height)
    return int(np.argmin([abs(math.log(w / h) - target) for w, h in buckets]))


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of indices that share a bucket, reshuffled each epoch from ``seed`` and ``epoch``.

    With ``num_replicas`` > 1 each process takes every ``num_replicas``-th batch (equal counts, so every
    process runs the same number of steps). ``skip_batches`` skips the first batches of the next epoch
    started (resuming in the middle of an epoch) without loading them.
    """

    def __init__(self, bucket_ids: Sequence[int], batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = True, num_replicas: int = 1, rank: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be at least 1")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank} is not in [0, num_replicas={num_replicas})")
        self.bucket_ids = np.asarray(bucket_ids, dtype=np.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.skip_batches = 0
        if len(self) == 0:
            raise ValueError(
                f"{len(self.bucket_ids)} samples make no full batch of {batch_size} per bucket on "
                f"{num_replicas} process(es); lower train_batch_size or add data"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _all_batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = []
        for bucket in np.unique(self.bucket_ids):
            idx = np.flatnonzero(self.bucket_ids == bucket)
            if self.shuffle:
                idx = rng.permutation(idx)
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start:start + self.batch_size].tolist()
                if len(chunk) == self.batch_size or not self.drop_last:
                    batches.append(chunk)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        usable = len(batches) // self.num_replicas * self.num_replicas
        return batches[:usable]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._all_batches()[self.rank::self.num_replicas]
        skip, self.skip_batches = self.skip_batches, 0
        yield from batches[skip:]

    def __len__(self) -> int:
        return len(self._all_batches()) // self.num_replicas
