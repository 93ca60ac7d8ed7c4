"""Batches on a Ray cluster (the ``latentgraph[ray]`` extra; nothing else imports Ray).

One long-lived actor per GPU (or per CPU slot where there is none), each with its own
executor, model cache and result cache, so a checkpoint loads once per worker. The dispatcher
keeps at most ``max_in_flight`` jobs queued at each worker, and sends a job to a free worker
that already ran the job's model files when there is one. Workers render into a folder of
their own and send the files back with the job's record, so results land in the driver's
output folder whether or not the machines share a disk. Progress events come back through a
Ray queue. A job whose worker dies is run again once on another worker; a job that fails in a
node is recorded as failed and the rest go on; Ctrl-C stops the workers and keeps every record
already written.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import queue
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ..graph import LatentgraphError
from ..graph.executor import ui_files
from . import Job, execute_job, in_job_folder, write_atomic

try:
    import ray
    from ray.util.queue import Queue
except ImportError:  # pragma: no cover - exercised only where the extra is missing
    ray = None

PROGRESS_INTERVAL = 0.2  # seconds between progress events a worker sends for one job
SHIPPED = ("output", "temp")  # file types a worker sends back (input files are the driver's own)


def _require_ray():
    if ray is None:
        raise LatentgraphError("latentgraph: --ray needs Ray: pip install 'latentgraph[ray]'")
    return ray


class BatchWorker:
    """One worker: a registry (built-ins and plugins), an executor and its caches."""

    def __init__(self, env_fields: dict, custom_nodes: list[str], plugins: bool, name: str, events=None):
        from ..graph import Environment, Executor
        from ..nodes import create_registry, create_services
        from ..plugins import load_plugins

        self.name = name
        self.events = events
        self.scratch = Path(tempfile.mkdtemp(prefix=f"latentgraph-{name}-"))
        fields = dict(env_fields, output_dir=self.scratch / "output", temp_dir=self.scratch / "temp")
        env = Environment(**fields)
        registry = create_registry()
        if plugins:
            load_plugins(registry, custom_nodes)
        self.executor = Executor(registry, env, services=create_services(env))

    def ping(self) -> dict:
        return {"name": self.name, "pid": os.getpid(), "device": self.executor.env.device}

    def interrupt(self) -> None:
        self.executor.interrupt()

    def free(self) -> None:
        """Forget the cached results (the server's /free)."""
        self.executor.cache.clear()

    def _ship(self, output: dict) -> dict:
        """The files an `executed` output names, as bytes. They stay here: a cached output node
        of a later prompt names the same files."""
        env = self.executor.env
        files = {}
        for item in ui_files(output):
            kind, sub = item.get("type", "output"), item.get("subfolder", "")
            if kind in SHIPPED:
                path = _within(env.folder_of(kind), sub, item["filename"])
                if path is not None and path.is_file():
                    files[(kind, sub, item["filename"])] = path.read_bytes()
        return files

    def run_prompt(self, prompt: dict, prompt_id: str, targets, extra_data: dict, partial: bool) -> dict:
        """Run a server prompt, sending every event (with the files of `executed` outputs) back."""
        from ..graph import Interrupted, NodeExecutionError, ValidationError, Workflow

        def listener(kind: str, data: dict) -> None:
            data = dict(data)
            if kind == "progress" and "preview" in data:
                preview = data.pop("preview")
                try:
                    data["preview"] = preview() if callable(preview) else preview
                except Exception:
                    pass
            if kind == "executed":
                data["__files__"] = self._ship(data.get("output") or {})
            self.events.actor.put_nowait.remote((prompt_id, kind, data))

        reply: dict = {"status": "success"}
        try:
            wf = Workflow.from_api(prompt, source=f"prompt {prompt_id}")
            self.executor.run(wf, prompt_id=prompt_id, targets=targets, extra_data=extra_data, listener=listener,
                              partial=partial)
        except NodeExecutionError as exc:
            reply = {"status": "error", "node": exc.node_id, "class_type": exc.class_type,
                     "message": exc.exception_message, "type": exc.exception_type}
        except Interrupted as exc:
            reply = {"status": "interrupted", "node": exc.node_id, "class_type": exc.class_type}
        except ValidationError as exc:
            reply = {"status": "invalid", "message": exc.format()}
        # every event above is in the queue before the end mark (calls from one caller keep their order)
        ray.get(self.events.actor.put_nowait.remote((prompt_id, "__end__", reply)))
        return reply

    def run(self, job: Job) -> dict:
        """Run one job; the record, with the files it wrote as bytes (kept here, as in _ship)."""
        last = [0.0]

        def listener(kind: str, data: dict) -> None:
            if self.events is None or kind not in ("progress", "executing"):
                return
            now = time.monotonic()
            if kind == "progress" and now - last[0] < PROGRESS_INTERVAL and data.get("value") != data.get("max"):
                return
            last[0] = now
            slim = {k: v for k, v in data.items() if k != "preview"}
            self.events.actor.put_nowait.remote((job.job_id, {**slim, "event": kind}))

        record = execute_job(self.executor, job, listener, worker=self.name)
        out = self.executor.env.output_dir
        files = {}
        for item in record["files"]:
            kind, _, rel = item.partition(":")
            if kind == "output" and in_job_folder(rel, job.job_id):  # execute_job failed the job if not
                files[rel] = (out / rel).read_bytes()  # kept here: a cached output node names them again
        return {"record": record, "files": files}

    def cleanup(self) -> None:
        """Remove this worker's scratch folder (its rendered files)."""
        shutil.rmtree(self.scratch, ignore_errors=True)


class RayRunner:
    """Runs a batch's jobs on Ray actors."""

    name = "ray"

    def __init__(self, address: str, env, *, workers: int | None = None, custom_nodes=(), plugins: bool = True,
                 max_in_flight: int = 2, init_kwargs: dict | None = None):
        _require_ray()
        if workers is not None and workers < 1:
            raise LatentgraphError("latentgraph: --workers must be at least 1")
        self.output_dir = Path(env.output_dir)
        self.max_in_flight = max(1, max_in_flight)
        self._owns_ray = False
        if not ray.is_initialized():
            kwargs = dict(init_kwargs or {})
            kwargs.setdefault("include_dashboard", False)
            kwargs.setdefault("logging_level", "warning")
            if address == "local":  # a cluster of this machine alone: on loopback, without auth tokens
                os.environ.setdefault("RAY_AUTH_MODE", "disabled")
                kwargs.setdefault("_node_ip_address", "127.0.0.1")
                ray.init(**kwargs)
            else:
                _check_reachable(address)
                try:
                    ray.init(address=address, **kwargs)
                except (ConnectionError, RuntimeError, ValueError) as exc:
                    raise LatentgraphError(f"latentgraph: cannot join the Ray cluster at {address}: {exc}") from None
            self._owns_ray = True
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
        count = workers or (gpus or cpus)
        per_worker = {"num_gpus": 1, "num_cpus": 0} if gpus else {"num_cpus": 1}
        if gpus and count > gpus:
            per_worker = {"num_gpus": gpus / count, "num_cpus": 0}
        self.name = f"ray ({count} worker{'s' if count != 1 else ''}, {'GPU' if gpus else 'CPU'})"
        env_fields = {f.name: getattr(env, f.name) for f in dataclasses.fields(env)}
        self.events = Queue(actor_options={"num_cpus": 0})
        # threads: an interrupt or a ping reaches a worker while it runs (the executor runs one job at a time)
        remote_cls = ray.remote(max_restarts=0, max_task_retries=0, max_concurrency=4)(BatchWorker)
        self.workers = [remote_cls.options(**per_worker).remote(env_fields, [str(c) for c in custom_nodes], plugins,
                                                                f"worker-{i}", self.events)
                        for i in range(count)]
        self.held: dict[int, set[str]] = {i: set() for i in range(count)}
        self.alive = set(range(count))
        self.pids = ray.get([w.ping.remote() for w in self.workers])

    # -- dispatch ----------------------------------------------------------------------------
    def _pick(self, job: Job, load: dict[int, int], exclude: set[int]) -> int | None:
        free = [i for i in sorted(self.alive - exclude) if load[i] < self.max_in_flight]
        if not free:
            return None
        holders = [i for i in free if set(job.checkpoints) <= self.held[i] and job.checkpoints]
        return min(holders or free, key=lambda i: load[i])

    def run(self, jobs: list[Job], on_done: Callable[[dict], None], on_progress: Callable[[Job, dict], None]):
        by_id = {j.job_id: j for j in jobs}
        pending = collections.deque(jobs)
        attempts: dict[str, int] = collections.Counter()
        died_on: dict[str, set[int]] = collections.defaultdict(set)
        load = {i: 0 for i in range(len(self.workers))}
        inflight: dict[Any, tuple[Job, int]] = {}
        try:
            while pending or inflight:
                waiting = collections.deque()
                while pending:
                    job = pending.popleft()
                    if not (self.alive - died_on[job.job_id]):
                        self._fail(job, on_done, attempts, "no worker left to run it (every worker died)")
                        continue
                    index = self._pick(job, load, died_on[job.job_id])
                    if index is None:
                        waiting.append(job)
                        if all(load[i] >= self.max_in_flight for i in self.alive):
                            waiting.extend(pending)
                            pending.clear()
                        continue
                    attempts[job.job_id] += 1
                    load[index] += 1
                    inflight[self.workers[index].run.remote(job)] = (job, index)
                pending = waiting
                if not inflight:
                    continue
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=0.1)
                self._drain(by_id, on_progress)
                for ref in ready:
                    job, index = inflight.pop(ref)
                    load[index] -= 1
                    try:
                        reply = ray.get(ref)
                    except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as exc:
                        self.alive.discard(index)
                        died_on[job.job_id].add(index)
                        if attempts[job.job_id] < 2:
                            pending.appendleft(job)  # once more, on another worker
                        else:
                            self._fail(job, on_done, attempts, f"its worker died twice ({type(exc).__name__})")
                        continue
                    except ray.exceptions.RayTaskError as exc:  # not a node's failure: a bug, reported
                        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                        self._fail(job, on_done, attempts, f"{type(cause).__name__}: {cause}")
                        continue
                    self._store(reply, job, index, attempts, on_done)
            self._drain(by_id, on_progress)
        except KeyboardInterrupt:
            for worker in self.workers:
                ray.kill(worker)
            self.alive.clear()
            raise

    def _store(self, reply: dict, job: Job, index: int, attempts, on_done) -> None:
        record = reply["record"]
        record["attempts"] = attempts[record["job_id"]]
        strays = [rel for rel in reply["files"] if not in_job_folder(rel, job.job_id)]
        if strays:  # the worker checks this too; nothing it sends lands outside the job's folder
            self._fail(job, on_done, attempts, f"its worker sent files outside the job's folder: {', '.join(strays)}")
            return
        for rel, data in reply["files"].items():
            write_atomic(self.output_dir / rel, data)
        if record["status"] == "success":
            self.held[index].update(job.checkpoints)  # its model cache holds them now
        on_done(record)

    def _fail(self, job: Job, on_done, attempts, why: str) -> None:
        on_done({"job_id": job.job_id, "index": job.index, "overrides": job.overrides, "seeds": job.seeds,
                 "worker": None, "status": "failed", "files": [], "timings": {}, "seconds": 0.0,
                 "attempts": attempts[job.job_id], "error": f"job {job.job_id}: {why}"})

    def _drain(self, by_id: dict, on_progress) -> None:
        while True:
            try:
                job_id, data = self.events.get_nowait()
            except Exception:  # ray.util.queue.Empty
                return
            if job_id in by_id:
                on_progress(by_id[job_id], data)

    def kill_worker(self, index: int) -> None:
        """Kill one worker's process (for tests and drills: its jobs go to the others)."""
        ray.kill(self.workers[index], no_restart=True)

    def close(self) -> None:
        try:
            ray.get([self.workers[i].cleanup.remote() for i in self.alive], timeout=30)
        except Exception:  # a worker that is gone keeps its scratch folder until the machine cleans /tmp
            pass
        for i in list(self.alive):
            ray.kill(self.workers[i])
        self.alive.clear()
        try:
            ray.kill(self.events.actor)
        except Exception:
            pass
        if self._owns_ray:
            ray.shutdown()


class RayExecutor:
    """Stands in for the server's Executor (``latentgraph serve --ray``): each queued prompt runs
    on a free Ray worker, ``parallel`` at a time, and every event it makes is relayed to the
    server's listener as it happens; files the outputs name are copied into the server's
    folders first (renumbered if the name is taken), so ``/view`` finds them."""

    def __init__(self, address: str, env, *, workers: int | None = None, custom_nodes=(), plugins: bool = True,
                 init_kwargs: dict | None = None):
        self.pool = RayRunner(address, env, workers=workers, custom_nodes=custom_nodes, plugins=plugins,
                              max_in_flight=1, init_kwargs=init_kwargs)
        self.env = env
        self.parallel = len(self.pool.workers)
        self.cache = _RemoteCaches(self)
        self._free: queue.Queue = queue.Queue()
        for i in range(self.parallel):
            self._free.put(i)
        self._busy: dict[str, int] = {}
        self._placed: dict[tuple, tuple[str, str]] = {}  # (worker, type, subfolder, name) -> (name here, digest)
        self._routes: dict[str, queue.Queue] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._pump = threading.Thread(target=self._route_events, name="latentgraph-ray-events", daemon=True)
        self._pump.start()

    def _route_events(self) -> None:
        while not self._closing.is_set():
            try:
                pid, kind, data = self.pool.events.get(timeout=0.2)
            except Exception:  # Empty, or the queue is gone at shutdown
                continue
            with self._lock:
                route = self._routes.get(pid)
            if route is not None:
                route.put((kind, data))

    def run(self, wf, *, prompt_id: str | None = None, targets=None, extra_data: dict | None = None,
            listener=None, partial: bool = False):
        from ..graph import Interrupted, NodeExecutionError

        pid = prompt_id or wf.source
        while True:
            if not self.pool.alive:
                raise LatentgraphError("no Ray worker is left to run the prompt (every worker died)")
            try:
                index = self._free.get(timeout=1.0)
            except queue.Empty:
                continue
            if index in self.pool.alive:
                break
        route: queue.Queue = queue.Queue()
        dead = False
        with self._lock:
            self._routes[pid] = route
            self._busy[pid] = index
        try:
            worker = self.pool.workers[index]
            ref = worker.run_prompt.remote(wf.to_api(), pid, targets, dict(extra_data or {}), partial)
            while True:
                try:
                    kind, data = route.get(timeout=0.5)
                except queue.Empty:
                    ready, _ = ray.wait([ref], timeout=0)
                    if ready:
                        try:
                            ray.get(ref)  # returns after its end mark was queued; raises if the worker died
                        except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as exc:
                            dead = True
                            self.pool.alive.discard(index)
                            raise LatentgraphError(f"the Ray worker running the prompt died ({type(exc).__name__})"
                                                   ) from None
                    continue
                if kind == "__end__":
                    reply = data
                    break
                files = data.pop("__files__", None)
                if files:
                    self._place(index, files, data.get("output") or {})
                if listener is not None:
                    listener(kind, data)
        finally:
            with self._lock:
                self._routes.pop(pid, None)
                self._busy.pop(pid, None)
            if not dead:
                self._free.put(index)
        if reply["status"] == "error":
            raise NodeExecutionError(reply["node"], reply["class_type"], RuntimeError(reply["message"]), [], wf.source)
        if reply["status"] == "interrupted":
            raise Interrupted(reply.get("node"), reply.get("class_type"))
        if reply["status"] == "invalid":
            raise LatentgraphError(reply["message"])
        return reply

    def _place(self, index: int, files: dict, output: dict) -> None:
        """Write the files into the server's folders; a taken name gets the next free counter.
        The same file sent again (a cached output node) keeps the name it got the first time."""
        renamed = {}
        with self._lock:
            for (kind, sub, name), data in files.items():
                if _within(self.env.folder_of(kind), sub, name) is None:
                    continue  # the worker sends only files inside its folders; this is a stray
                folder = Path(self.env.folder_of(kind)) / sub
                digest = hashlib.blake2b(data, digest_size=16).hexdigest()
                placed = self._placed.get((index, kind, sub, name))
                if placed is not None and placed[1] == digest and (folder / placed[0]).is_file():
                    renamed[(kind, sub, name)] = placed[0]
                    continue
                final = _free_name(folder, name)
                write_atomic(folder / final, data)
                self._placed[(index, kind, sub, name)] = (final, digest)
                renamed[(kind, sub, name)] = final
        for item in ui_files(output):
            key = (item.get("type", "output"), item.get("subfolder", ""), item["filename"])
            item["filename"] = renamed.get(key, item["filename"])

    def interrupt(self, prompt_id: str | None = None) -> None:
        with self._lock:
            busy = [i for p, i in self._busy.items() if prompt_id is None or p == prompt_id]
        for index in busy:
            self.pool.workers[index].interrupt.remote()

    def close(self) -> None:
        self._closing.set()
        self.pool.close()


class _RemoteCaches:
    """``executor.cache.clear()`` for the server's /free: clears every worker's result cache."""

    def __init__(self, owner: RayExecutor):
        self.owner = owner

    def clear(self) -> None:
        ray.get([w.free.remote() for w in self.owner.pool.workers])


def _check_reachable(address: str) -> None:
    """Fail fast (Ray itself retries for minutes) when HOST:PORT does not answer."""
    import socket

    match = re.fullmatch(r"(?:ray://)?\[?([^\]]+?)\]?:(\d+)", address)
    if match is None:
        return  # "auto" and other forms are left to Ray
    try:
        with socket.create_connection((match.group(1), int(match.group(2))), timeout=5):
            pass
    except OSError as exc:
        raise LatentgraphError(f"latentgraph: cannot reach the Ray cluster at {address}: "
                               f"{exc.strerror or exc}") from None


def _within(folder: Path, sub: str, name: str) -> Path | None:
    """``folder/sub/name`` when a UI entry's subfolder and name stay inside ``folder`` (no
    absolute part, no '..'); else None."""
    sub, name = str(sub or "").replace("\\", "/"), str(name or "").replace("\\", "/")
    rel = f"{sub}/{name}" if sub else name
    if not name or "\x00" in rel or rel.startswith("/") or ".." in rel.split("/") or re.match(r"[A-Za-z]:", rel):
        return None
    return Path(folder) / rel


def _free_name(folder: Path, name: str) -> str:
    """``name``, or when taken the same prefix with the next counter ComfyUI-style (x_00007_.png)."""
    if not (folder / name).exists():
        return name
    match = re.match(r"^(.*)_(\d{5,})_(\.[^.]+)$", name)
    if match is None:
        stem, dot, ext = name.rpartition(".")
        n = 1
        while (folder / f"{stem}_{n}.{ext}").exists():
            n += 1
        return f"{stem}_{n}.{ext}"
    prefix, _, ext = match.groups()
    taken = [int(m.group(1)) for p in folder.iterdir()
             if (m := re.match(rf"^{re.escape(prefix)}_(\d{{5,}})_{re.escape(ext)}$", p.name))]
    return f"{prefix}_{max(taken, default=0) + 1:05d}_{ext}"
