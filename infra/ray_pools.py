"""Ray actor pools that keep models loaded across items: a tracking pool and a dubbing pool.

Plain Ray, not prefect-ray: Prefect tasks run as stateless Ray tasks there, and our point is that
MediaPipe, the generator and the audio encoder stay in memory from one item to the next. Actors
get paths and small jobs; they decode frames from storage themselves, so no video crosses the
object store. A crashed actor is restarted by Ray and its in-flight call retried there
(``max_restarts``, ``max_task_retries``); a call that still fails becomes a failed row. Several
shard tasks (threads of the flow) share the pools: an actor is handed to whichever asks first.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from catalogs.settings import Settings
from catalogs.storage import Storage
from infra.ray_connect import join

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
SECRET_FIELDS = {"aws_access_key_id", "aws_secret_access_key", "aws_session_token", "ray_auth_token"}


def worker_settings(settings: Settings) -> dict:
    """Settings as actors receive them: without credentials, which each worker reads from its own
    environment (so they never travel through the object store or its logs)."""
    return settings.model_dump(exclude=SECRET_FIELDS)


def connect(settings: Settings) -> None:
    """Join the configured Ray cluster, or start the embedded one bound to 127.0.0.1."""
    if ray.is_initialized():
        return
    if settings.ray_address:
        join(settings)      # token auth as the cluster wants it; fails in seconds, naming the cause
        return
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"   # single node: else Ray binds the public address
    temp = Path(settings.ray_temp_dir or REPO / ".work" / "ray").resolve()
    temp.mkdir(parents=True, exist_ok=True)
    ray.init(num_cpus=settings.ray_num_cpus or os.cpu_count(), include_dashboard=False, namespace="resync",
             _node_ip_address="127.0.0.1", _temp_dir=str(temp), logging_level=logging.WARNING,
             log_to_driver=False)


def cluster_has_gpus() -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0


def placement() -> dict:
    """Where the calling actor runs: node id and address, pid, and the resources Ray gave it."""
    ctx = ray.get_runtime_context()
    return {"node_id": ctx.get_node_id(), "node_ip": ray.util.get_node_ip_address(), "pid": os.getpid(),
            "resources": {k: round(v, 4) for k, v in ctx.get_assigned_resources().items()}}


class TrackingWorker:
    """Tracks videos (MediaPipe Face Mesh on CPU); artifacts are cached in storage by content hash."""

    def __init__(self, settings: dict) -> None:
        self.settings = Settings(**settings)
        self.storage = Storage(self.settings)

    def track(self, video_uri: str, video_sha256: str):
        from tasks.dub_item import track_item

        return track_item(self.storage, self.settings, video_uri, video_sha256)

    def pid(self) -> int:
        return os.getpid()

    def placement(self) -> dict:
        return placement()


class DubbingWorker:
    """Dubs items with models loaded once per actor (dynamics, render, composite, encode)."""

    def __init__(self, settings: dict, threads: int | None) -> None:
        import torch

        from tasks.dub_item import ModelCache

        self.settings = Settings(**settings)
        self.storage = Storage(self.settings)
        if not torch.cuda.is_available():
            torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // max(self.settings.dubbing_actors, 1)))
        self.models = ModelCache(self.storage, self.settings)

    def dub(self, job) -> dict:
        from tasks.dub_item import dub_item

        return dub_item(self.storage, self.settings, job, self.models)

    def warm(self, model_uri: str, frame_sizes: list[tuple[int, int]] | None = None) -> float:
        """Load a model and compile its generator for the batches of the shard's videos (sent while
        they are being tracked) before the first item needs them; returns the seconds it took."""
        from tasks.dub_item import warm_model

        return warm_model(self.settings, self.models, model_uri, frame_sizes or ())

    def pid(self) -> int:
        return os.getpid()

    def placement(self) -> dict:
        return placement()


@dataclass
class ActorPool:
    """Actors of one kind, shared by the shard threads of a flow run."""

    make: Callable[[], Any]
    size: int
    actors: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self._idle: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        for _ in range(self.size):
            actor = self.make()
            self.actors.append(actor)
            self._idle.put(actor)

    def take(self, wait: float = 0.0) -> Any | None:
        """An idle actor, waiting up to ``wait`` seconds for one; None when all stay busy."""
        try:
            return self._idle.get(timeout=wait) if wait > 0 else self._idle.get_nowait()
        except queue.Empty:
            return None

    def give(self, actor) -> None:
        self._idle.put(actor)

    def map(self, method: str, calls: list[tuple], on_error: Callable[[int, Exception], Any],
            done: Callable[[int, Any], None] | None = None, deadline: float | None = None) -> list:
        """Run ``actor.method(*call)`` for every call on whichever actors are free; results in order.

        ``on_error(i, exc)`` gives the result of a call whose actor died for good (or that raised),
        and of every call unfinished at ``deadline`` (``time.monotonic()``): the actors still busy
        then are replaced, so a hung item cannot hold a pool. ``done(i, result)`` is called for
        every call as it finishes (or fails, or times out).
        """
        results: list = [None] * len(calls)

        def finished(i: int, result: Any) -> None:
            results[i] = result
            if done:
                done(i, result)

        batch = Calls(self, method, on_error, finished)
        for i, args in enumerate(calls):
            batch.add(i, *args)
        drive([batch], deadline)
        return results

    def _replace(self, dead) -> Any:
        with self._lock:
            ray.kill(dead, no_restart=True)
            fresh = self.make()
            self.actors[self.actors.index(dead)] = fresh
            return fresh

    def pids(self) -> list[int]:
        return ray.get([a.pid.remote() for a in self.actors])

    def placements(self, timeout: float = 60.0) -> list[dict]:
        """Where each actor of the pool runs now (see :func:`placement`)."""
        return ray.get([a.placement.remote() for a in self.actors], timeout=timeout)

    def broadcast(self, method: str, *args: Any) -> list:
        """Call ``actor.method(*args)`` on every actor without waiting (an actor runs its calls in
        order, so later work waits behind it); returns the object refs."""
        return [getattr(a, method).remote(*args) for a in self.actors]

    def kill(self) -> None:
        for a in self.actors:
            ray.kill(a, no_restart=True)


class Calls:
    """One caller's calls of one method on a pool, added at any time (also from ``done`` of another
    batch) and handed to the pool's actors as they come free. :func:`drive` runs batches of several
    pools in one loop, so one stage's results can feed the next while it is still running.

    ``done(key, result)`` gets each call's result; ``on_error(key, exc)`` makes the result of a call
    whose actor died for good, that raised, or that was unfinished at the deadline. ``waited[key]``:
    the seconds a call waited in this batch for a free actor.
    """

    def __init__(self, pool: ActorPool, method: str, on_error: Callable[[Any, Exception], Any],
                 done: Callable[[Any, Any], None]) -> None:
        self.pool, self.method, self.on_error, self.done = pool, method, on_error, done
        self.todo: deque = deque()          # (key, args, time added)
        self.running: dict = {}             # object ref -> (key, actor)
        self.waited: dict = {}

    @property
    def pending(self) -> bool:
        return bool(self.todo or self.running)

    def add(self, key: Any, *args: Any) -> None:
        self.todo.append((key, args, time.monotonic()))

    def dispatch(self, wait: float = 0.0) -> None:
        """Start queued calls on the idle actors (waiting up to ``wait`` s for the first one)."""
        while self.todo:
            actor = self.pool.take(wait)
            if actor is None:
                return
            wait = 0.0
            key, args, added = self.todo.popleft()
            self.waited[key] = time.monotonic() - added
            self.running[getattr(actor, self.method).remote(*args)] = (key, actor)

    def collect(self, ref) -> None:
        """The result of a finished call (``ray.wait`` said ``ref`` is ready), to ``done``."""
        key, actor = self.running.pop(ref)
        try:
            result = ray.get(ref)
            self.pool.give(actor)
        except RayActorError as e:
            log.warning("%s worker died for good on call %s: %s", self.method, key, e)
            result = self.on_error(key, e)
            self.pool.give(self.pool._replace(actor))
        except RayTaskError as e:
            result = self.on_error(key, e)
            self.pool.give(actor)
        self.done(key, result)

    def expire(self, late: Exception) -> None:
        """Fail every call still queued or running; the actors running one are replaced."""
        running, todo = list(self.running.values()), list(self.todo)
        self.running.clear()
        self.todo.clear()
        for key, actor in running:
            self.pool.give(self.pool._replace(actor))
            self.done(key, self.on_error(key, late))
        for key, _, _ in todo:
            self.done(key, self.on_error(key, late))


def drive(batches: list[Calls], deadline: float | None = None) -> None:
    """Run ``batches`` until none has calls left (their ``done`` may add more); at ``deadline``
    (``time.monotonic()``) everything unfinished fails with a TimeoutError."""
    while any(b.pending for b in batches):
        if deadline is not None and time.monotonic() > deadline:
            while any(b.pending for b in batches):     # a failure may still add to another batch
                for b in batches:
                    b.expire(TimeoutError("the shard ran past its timeout"))
            return
        for b in batches:
            b.dispatch()
        owner = {ref: b for b in batches for ref in b.running}
        if not owner:                                   # the actors are busy with other shards' calls
            next(b for b in batches if b.todo).dispatch(wait=0.5)
            continue
        ready, _ = ray.wait(list(owner), num_returns=1, timeout=0.5)
        for ref in ready:
            owner[ref].collect(ref)


@dataclass
class Pools:
    tracking: ActorPool
    dubbing: ActorPool


_pools: dict[str, Pools] = {}
_pools_lock = threading.Lock()


def make_pools(settings: Settings) -> Pools:
    """Create both pools; the dubbing actors ask for GPUs when the cluster has them."""
    ws = worker_settings(settings)
    common = {"max_restarts": settings.actor_max_restarts, "max_task_retries": settings.item_retries}
    tracker = ray.remote(TrackingWorker).options(num_cpus=settings.tracking_actor_cpus,
                                                 resources=settings.tracking_actor_resources or None, **common)
    dubbing = {"resources": settings.dubbing_actor_resources or None, **common}
    if cluster_has_gpus():
        dubber = ray.remote(DubbingWorker).options(num_cpus=0.5, num_gpus=settings.dubbing_actor_gpus, **dubbing)
    else:
        dubber = ray.remote(DubbingWorker).options(num_cpus=settings.dubbing_actor_cpus, **dubbing)
    return Pools(ActorPool(lambda: tracker.remote(ws), settings.tracking_actors),
                 ActorPool(lambda: dubber.remote(ws, settings.dubbing_threads), settings.dubbing_actors))


def pools_for(settings: Settings) -> Pools:
    """The pools of these settings in this process, created on first use (flows call this from
    every shard task; the models stay loaded for the whole run)."""
    key = settings.model_dump_json(exclude=SECRET_FIELDS)
    with _pools_lock:
        if key not in _pools:
            connect(settings)
            _pools[key] = make_pools(settings)
        return _pools[key]


def pool_placements(settings: Settings) -> list[dict]:
    """Where the actors of this process's pools for ``settings`` run (empty when none were made):
    one entry per actor with its pool's name, for the run summary and report."""
    with _pools_lock:
        pools = _pools.get(settings.model_dump_json(exclude=SECRET_FIELDS))
    if pools is None:
        return []
    found = []
    for name, pool in (("tracking", pools.tracking), ("dubbing", pools.dubbing)):
        try:
            found += [{"pool": name, **p} for p in pool.placements()]
        except (RayActorError, GetTimeoutError) as e:
            log.warning("could not ask the %s pool where it runs: %s", name, e)
    return found


def shutdown() -> None:
    """Kill the pools of this process and leave Ray (the embedded cluster stops with it)."""
    with _pools_lock:
        for p in _pools.values():
            p.tracking.kill()
            p.dubbing.kill()
        _pools.clear()
    if ray.is_initialized():
        ray.shutdown()


def _training_task(settings: dict, fn: Callable, args: tuple, kwargs: dict):
    import torch

    if not torch.cuda.is_available():
        torch.set_num_threads(os.cpu_count() or 1)
    return fn(Settings(**settings), *args, **kwargs)


def run_training(settings: Settings, fn: Callable, *args, **kwargs):
    """Run a training job ``fn(settings, *args, **kwargs)`` as one Ray task: on a GPU worker when the
    cluster has one, else on a CPU worker with all its cores. Not retried (budgets are wall time)."""
    connect(settings)
    resources = {"num_gpus": 1} if cluster_has_gpus() else {"num_cpus": 1}
    task = ray.remote(_training_task).options(max_retries=0, **resources)
    return ray.get(task.remote(worker_settings(settings), fn, args, kwargs))
