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

    def warm(self, model_uri: str) -> float:
        """Load a model and its compiled generator before the first item needs them (sent while
        the shard's videos are being tracked); returns the seconds it took."""
        from tasks.dub_item import warm_model

        return warm_model(self.settings, self.models, model_uri)

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

    def map(self, method: str, calls: list[tuple], on_error: Callable[[int, Exception], Any],
            done: Callable[[int, Any], None] | None = None, deadline: float | None = None) -> list:
        """Run ``actor.method(*call)`` for every call on whichever actors are free; results in order.

        ``on_error(i, exc)`` gives the result of a call whose actor died for good (or that raised),
        and of every call unfinished at ``deadline`` (``time.monotonic()``): the actors still busy
        then are replaced, so a hung item cannot hold a pool.
        """
        results: list = [None] * len(calls)
        todo = deque(range(len(calls)))
        running: dict = {}
        while todo or running:
            if deadline is not None and time.monotonic() > deadline:
                late = TimeoutError("the shard ran past its timeout")
                for ref, (i, actor) in list(running.items()):
                    results[i] = on_error(i, late)
                    self._idle.put(self._replace(actor))
                for i in todo:
                    results[i] = on_error(i, late)
                return results
            while todo:
                try:
                    actor = self._idle.get(block=not running, timeout=None if running else 1.0)
                except queue.Empty:
                    break
                i = todo.popleft()
                running[getattr(actor, method).remote(*calls[i])] = (i, actor)
            if not running:
                continue
            ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
            for ref in ready:
                i, actor = running.pop(ref)
                try:
                    results[i] = ray.get(ref)
                    self._idle.put(actor)
                except RayActorError as e:
                    log.warning("%s worker died for good on call %d: %s", method, i, e)
                    results[i] = on_error(i, e)
                    self._idle.put(self._replace(actor))
                except RayTaskError as e:
                    results[i] = on_error(i, e)
                    self._idle.put(actor)
                if done:
                    done(i, results[i])
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
