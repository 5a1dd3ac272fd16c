"""Executors of the shard runner (``helpers.shards.run_shards``): a local process pool and a pool of Ray actors.

An executor gets the shards to do and ``work`` (a picklable callable ``work(shard) -> completion record``
that runs the shard function and writes its files, i.e. ``shards.process_shard`` bound to a run), and hands
each record to ``done`` as it arrives. It decides only *where* shards run; what is reused, what is rerun and
what is written is decided once, in ``run_shards``. A ``ConfigError`` raised in a worker stops the run.

Ray: one long-lived actor per replica of the shard function's state. An actor calls the shard function's
``prepare()`` once, when it starts, if it has one (the image search builds its model there, once per actor
and GPU, instead of once per shard), then runs the shards ``ray.util.ActorPool`` hands it.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from helpers.shards import ConfigError, Shard


@dataclass(frozen=True)
class RayOptions:
    """Where the Ray executor runs and what each actor reserves.

    ``address``: a cluster (else ``RAY_ADDRESS``, else a local Ray is started; an initialised Ray is used as
    is). ``num_cpus`` per actor (default 1). ``num_gpus`` per actor (default 1 when the cluster has GPUs,
    else 0). ``num_actors``: default as many as the cluster's GPUs (or CPUs, for CPU-only actors) allow.
    """

    address: str | None = None
    num_cpus: float | None = None
    num_gpus: float | None = None
    num_actors: int | None = None

    def placement(self, resources: dict[str, float], n_todo: int) -> tuple[float, float, int]:
        """(CPUs per actor, GPUs per actor, number of actors) for a cluster with ``resources``."""
        gpus, cpus = float(resources.get("GPU", 0)), float(resources.get("CPU", 1))
        per_gpu = float(self.num_gpus) if self.num_gpus is not None else (1.0 if gpus >= 1 else 0.0)
        per_cpu = float(self.num_cpus) if self.num_cpus is not None else 1.0
        if self.num_actors is not None:
            if not isinstance(self.num_actors, int) or self.num_actors < 1:
                raise ConfigError(f"ray_num_actors: expected a positive integer, got {self.num_actors!r}")
            n = self.num_actors
        elif per_gpu > 0:
            n = int(gpus // per_gpu)
        else:
            n = int(cpus // per_cpu) if per_cpu > 0 else 1
        return per_cpu, per_gpu, max(min(n, n_todo), 1)


def run_process_pool(
    todo: Sequence[Shard], work: Callable[[Shard], dict], workers: int | None, done: Callable[[dict], None]
) -> None:
    """Run ``work`` over ``todo`` in ``workers`` spawned processes (default: all cores), a bounded number
    of shards in flight so the driver's memory does not grow with the corpus."""
    workers = min(workers or os.cpu_count() or 1, len(todo))
    queue = iter(todo)
    # spawn, not fork: the parent may hold threads (pyarrow, tqdm) that fork would copy mid-state
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: set = set()
        try:
            while True:
                for shard in itertools.islice(queue, 2 * workers - len(pending)):
                    pending.add(pool.submit(work, shard))
                if not pending:
                    break
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    done(future.result())  # a ConfigError from a worker stops the run here
        except BaseException:
            for future in pending:
                future.cancel()
            raise


class ShardActor:
    """The body of a Ray actor: prepares the shard function's state once, then runs shards."""

    def __init__(self, work: Any) -> None:
        self.work = work
        prepare = getattr(work, "prepare", None)
        if callable(prepare):
            prepare()

    def run(self, shard: Shard) -> dict:
        return self.work(shard)


def _config_cause(err: BaseException) -> ConfigError | None:
    """The ``ConfigError`` inside a Ray task/actor error, if that is what it is."""
    seen = 0
    while err is not None and seen < 4:
        if isinstance(err, ConfigError):
            return err
        err = getattr(err, "cause", None)
        seen += 1
    return None


def run_ray_actors(
    todo: Sequence[Shard], work: Callable[[Shard], dict], options: RayOptions, done: Callable[[dict], None]
) -> None:
    """Run ``work`` over ``todo`` on a pool of Ray actors placed by ``options`` (see the module docstring)."""
    import ray
    from ray.util import ActorPool

    started_here = False
    if not ray.is_initialized():
        address = options.address or os.environ.get("RAY_ADDRESS") or None
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
        started_here = True
    actors: list = []
    try:
        per_cpu, per_gpu, n_actors = options.placement(ray.cluster_resources(), len(todo))
        actor_cls = ray.remote(num_cpus=per_cpu, num_gpus=per_gpu, max_restarts=0)(ShardActor)
        work_ref = ray.put(work)  # shipped to the object store once, not with every shard
        actors = [actor_cls.remote(work_ref) for _ in range(n_actors)]
        results = ActorPool(actors).map_unordered(lambda actor, shard: actor.run.remote(shard), todo)
        while True:
            try:
                record = next(results)
            except StopIteration:
                break
            except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError) as err:
                cause = _config_cause(getattr(err, "cause", None))
                if cause is not None:
                    raise ConfigError(str(cause)) from None
                raise
            done(record)
    finally:
        for actor in actors:
            ray.kill(actor)
        if started_here:
            ray.shutdown()


__all__ = ["RayOptions", "ShardActor", "run_process_pool", "run_ray_actors"]
