"""``idglow eval`` on several processes: ``accelerate launch --multi_gpu --num_processes N -m idglow eval ...``
(on CPUs with ``ACCELERATE_USE_CPU=1``).

Each process runs every N-th case of the selection (process ``r`` the cases ``r, r + N, …``), writes that case's
images and records under ``OUT/cases/<case>/``, and the rows of all processes are gathered (``gather_object``) in
the manifest's order, so that the main process writes the same report as a single process would (seeds belong to
cases, not to processes).

accelerate's process-wide state is created here once, by :func:`launched_state`, before anything else touches
it: a ``PartialState()`` made earlier without ``cpu=True`` on a machine without CUDA fixes every launched process
as a single, non-distributed one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from idglow.errors import IdGlowError

logger = logging.getLogger(__name__)

#: Environment variables that give the number of launched processes (torchrun / accelerate, then MPI).
WORLD_SIZE_VARIABLES = ["WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"]


def launched_processes() -> int:
    """How many processes the launcher started (1 when not launched), read from the environment only."""
    from accelerate.utils import get_int_from_env

    return get_int_from_env(WORLD_SIZE_VARIABLES, 1)


def runs_on_cpu() -> bool:
    """Whether accelerate will run on the CPU (``ACCELERATE_USE_CPU`` or no CUDA), read without creating its
    process-wide state."""
    import torch
    from accelerate.utils import parse_flag_from_env

    return parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()


def launched_state():
    """accelerate's ``PartialState`` when the run was launched on several processes, else None (a plain run
    never touches accelerate's state)."""
    if launched_processes() <= 1:
        return None
    from accelerate import PartialState

    state = PartialState(cpu=runs_on_cpu())
    if state.num_processes <= 1:  # e.g. a launcher's variables without a backend accelerate can start
        logger.warning("launched on %d processes, but accelerate runs a single process (%s)",
                       launched_processes(), state.distributed_type)
        return None
    return state


def shard_of(cases: Sequence, rank: int, world: int) -> list:
    """The cases process ``rank`` of ``world`` runs: every ``world``-th, starting at the ``rank``-th."""
    return list(cases[rank::world])


def gather_shards(state, run_shard: Callable[[], tuple[list[dict[str, Any]], dict[str, int]]],
                  case_ids: Sequence[str]) -> tuple[list[dict[str, Any]], dict[str, int], list[dict[str, Any]]]:
    """Run this process's shard (``run_shard() -> (case rows, stats)``) and gather every process's rows.

    Returns the rows of all processes in ``case_ids``' order, the stats summed over processes and, per process,
    its rank and the ids of the cases it ran. A process that fails still takes part in the gathering (the others
    would wait for it forever otherwise); then it raises its own error and the others one that names it.
    """
    from accelerate.utils import gather_object

    failure: BaseException | None = None
    try:
        rows, stats = run_shard()
        payload = {"rank": state.process_index, "rows": rows, "stats": dict(stats), "error": None}
    except Exception as err:  # re-raised below, once every process has reported
        failure = err
        payload = {"rank": state.process_index, "rows": [], "stats": {}, "error": f"{type(err).__name__}: {err}"}
    logger.info("process %d of %d ran cases %s", state.process_index, state.num_processes,
                [row["id"] for row in payload["rows"]])
    gathered = sorted(gather_object([payload]), key=lambda p: p["rank"])
    if failure is not None:
        raise failure
    failed = [p for p in gathered if p["error"]]
    if failed:
        raise IdGlowError("; ".join(f"process {p['rank']} failed: {p['error']}" for p in failed))
    by_id = {row["id"]: row for p in gathered for row in p["rows"]}
    stats_sum: dict[str, int] = {}
    for p in gathered:
        for key, value in p["stats"].items():
            stats_sum[key] = stats_sum.get(key, 0) + value
    shards = [{"rank": p["rank"], "cases": [row["id"] for row in p["rows"]]} for p in gathered]
    return [by_id[i] for i in case_ids], stats_sum, shards
