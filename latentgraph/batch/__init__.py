"""Batches: one workflow run many times with overrides (seeds, prompts, any input), in this
process or on a Ray cluster (:mod:`latentgraph.batch.ray_runner`, the ``latentgraph[ray]`` extra).

A jobs file (YAML) names the workflow and the overrides::

    workflow: txt2img.yaml          # relative to the jobs file
    grid:                           # every combination (a list, or "a..b" for integers)
      sampler.seed: 1..8
      positive.text: [a red circle on a blue background, a blue square on a red background]
    jobs:                           # and/or a list of override sets (each combined with the grid)
      - {sampler.cfg: 5.0}
      - {sampler.cfg: 7.5}

Every job gets an id: a hash of the prompt it runs (the workflow with its overrides applied).
Its images go to ``<output>/<job id>/`` (each ``filename_prefix`` is put under that folder) and
its record — overrides, seeds, files, timings, worker, attempts — to
``<output>/<job id>/job.json``, written last. A job whose record says it succeeded is done: a
rerun of the batch skips it, so nothing is lost or made twice. An unfinished job's folder is
emptied before it runs again, so every file a job makes must be in it: a ``filename_prefix``
that is absolute, climbs out with '..' or is linked (its text unknown until it runs) is refused
when the jobs are validated, and a job whose outputs name files elsewhere fails.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import posixpath
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ..graph import Executor, LatentgraphError, Problem, ValidationError, Workflow, WorkflowError
from ..graph import budgets
from ..graph.fileio import write_atomic  # the one atomic writer; the Ray runner imports it from here
from ..graph.loaders import parse_yaml
from ..graph.types import String

RECORD = "job.json"
SEED_INPUTS = ("seed", "noise_seed")
PREFIX_INPUT = "filename_prefix"  # put under the job's folder; must stay there


class BatchError(LatentgraphError):
    """A jobs file or sweep that cannot be run; the message names the file and the entry."""


@dataclass
class Job:
    """One run of the batch."""

    index: int
    overrides: dict[str, Any]
    prompt: dict  # the API prompt, filename prefixes already under the job's folder
    job_id: str
    checkpoints: tuple[str, ...] = ()  # model files it loads: the dispatcher's affinity key

    @property
    def seeds(self) -> dict[str, Any]:
        return {f"{nid}.{name}": value for nid, node in self.prompt.items()
                for name, value in node["inputs"].items() if name in SEED_INPUTS and not isinstance(value, list)}


@dataclass
class BatchResult:
    done: list[dict] = field(default_factory=list)      # records of jobs run now
    skipped: list[dict] = field(default_factory=list)   # records found from an earlier run
    failed: list[dict] = field(default_factory=list)    # records of jobs that failed now
    interrupted: bool = False
    seconds: float = 0.0


# -- overrides -----------------------------------------------------------------------------
def parse_values(text: Any, where: str) -> list:
    """A sweep's values: a list, "a..b" (integers, both ends included), or one value."""
    if isinstance(text, list):
        if not text:
            raise BatchError(f"{where}: the list of values is empty")
        return text
    if isinstance(text, str) and ".." in text:
        lo, _, hi = text.partition("..")
        try:
            a, b = int(lo), int(hi)
        except ValueError:
            raise BatchError(f"{where}: {text!r} is not a range of integers like 1..100") from None
        if b < a:
            raise BatchError(f"{where}: the range {text!r} is empty (its end is below its start)")
        _check_jobs(b - a + 1, where)
        return list(range(a, b + 1))
    return [text]


def _check_jobs(count: int, where: str) -> None:
    if count > budgets.limit("jobs"):
        raise BatchError(f"{where}: {budgets.over('jobs', 'the number of jobs')} (found {count:,})")


def grid(axes: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """Every combination of the axes' values, the first axis varying slowest; the number of
    combinations is held to the jobs budget before any is made."""
    names = list(axes)
    values = [parse_values(axes[n], f"{where}: {n}") for n in names]
    _check_jobs(math.prod(len(v) for v in values), where)
    return [dict(zip(names, combo)) for combo in itertools.product(*values)]


def sweep_overrides(sweeps: Iterable[str]) -> list[dict[str, Any]]:
    """``--sweep NODE.INPUT=VALUES`` (repeatable; several make a grid). VALUES is ``a..b`` or a
    YAML list (``[1, 2, 3]``)."""
    axes: dict[str, Any] = {}
    for item in sweeps:
        path, eq, raw = item.partition("=")
        if not eq or "." not in path:
            raise BatchError(f"--sweep {item[:200]!r}: expected NODE.INPUT=VALUES (1..100 or [a, b, c])")
        if ".." in raw and not raw.lstrip().startswith("["):
            axes[path] = raw.strip()
        else:
            try:
                budgets.check("set_value_chars", len(raw), f"--sweep {path}", "the values")
                axes[path] = parse_yaml(raw, f"--sweep {path}")
            except WorkflowError as exc:  # the workflow files' refusals: no aliases, bounded depth
                raise BatchError(f"--sweep {path}: cannot read the values: {exc.problems[0].message}") from None
    return grid(axes, "--sweep") if axes else [{}]


def read_jobs_file(path: str | Path) -> tuple[Path, list[dict[str, Any]]]:
    """(the workflow's path, one override mapping per job) from a jobs file."""
    from ..graph.env import read_yaml_file

    path = Path(path)
    data = read_yaml_file(path)
    if not isinstance(data, dict):
        raise BatchError(f"{path}: expected a mapping with workflow: and jobs: and/or grid:")
    unknown = sorted(set(data) - {"workflow", "jobs", "grid", "description"})
    if unknown:
        raise BatchError(f"{path}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                         f"(known: workflow, jobs, grid, description)")
    if not isinstance(data.get("workflow"), str):
        raise BatchError(f"{path}: 'workflow' must name the workflow file")
    workflow = Path(data["workflow"])
    workflow = workflow if workflow.is_absolute() else path.parent / workflow
    jobs = data.get("jobs")
    if jobs is not None and (not isinstance(jobs, list) or not all(isinstance(j, dict) for j in jobs)):
        raise BatchError(f"{path}: 'jobs' must be a list of mappings NODE.INPUT: VALUE")
    axes = data.get("grid")
    if axes is not None and not isinstance(axes, dict):
        raise BatchError(f"{path}: 'grid' must map NODE.INPUT to a list of values or a range a..b")
    points = grid(axes, f"{path}: grid") if axes else [{}]
    sets = [dict(j) for j in jobs] if jobs else [{}]
    combined = [{**point, **one} for one in sets for point in points]
    if not (jobs or axes):
        raise BatchError(f"{path}: no jobs: give 'jobs' (a list) and/or 'grid'")
    return workflow, combined


def _canonical(prompt: dict) -> str:
    """The prompt's meaning as text: inputs and class types, no titles or metadata."""
    slim = {nid: {"class_type": n["class_type"], "inputs": n["inputs"]} for nid, n in prompt.items()}
    return json.dumps(slim, sort_keys=True, separators=(",", ":"), default=str)


def job_id(prompt: dict) -> str:
    return hashlib.blake2b(_canonical(prompt).encode(), digest_size=8).hexdigest()


def make_jobs(wf: Workflow, overrides: list[dict[str, Any]], registry, env=None, source: str | None = None
              ) -> list[Job]:
    """One Job per override set, each validated; every problem of every job is raised at once,
    named after ``source`` (the jobs file; the workflow's file by default)."""
    from ..graph.validate import validate

    problems: list[Problem] = []
    jobs: list[Job] = []
    seen: dict[str, int] = {}
    for index, ov in enumerate(overrides):
        twin = wf.copy()
        bad = False
        for path, value in ov.items():
            node_id, dot, name = str(path).rpartition(".")
            if not dot or node_id not in twin.nodes:
                problems.append(Problem(f"job {index}: {path!r} names no node of the workflow "
                                        f"(nodes: {', '.join(list(twin.nodes)[:20])})"))
                bad = True
                continue
            ndef = registry.get(twin.nodes[node_id].class_type)
            if ndef is not None and name not in ndef.inputs:
                problems.append(Problem(f"job {index}: {ndef.name} has no input '{name}'", node=node_id, input=name))
                bad = True
                continue
            spec = ndef.inputs.get(name) if ndef is not None else None
            if isinstance(spec, String) and isinstance(value, (int, float)) and not isinstance(value, bool):
                value = str(value)  # YAML read a number where the input takes text
            twin.set(path, value)
        if bad:
            continue
        try:
            validate(twin, registry, env)
        except ValidationError as exc:
            problems.append(Problem(f"job {index} ({_describe(ov)}): " + exc.format().split("\n", 1)[-1].strip()))
            continue
        prompt = twin.to_api(registry)
        jid = job_id(prompt)
        if jid in seen:
            problems.append(Problem(f"job {index} ({_describe(ov)}) is the same run as job {seen[jid]}"))
            continue
        seen[jid] = index
        confined = _confine_prefixes(prompt, jid, f"job {index} ({_describe(ov)})")
        if confined:
            problems.extend(confined)
            continue
        ckpts = tuple(sorted({v for n in prompt.values() for k, v in n["inputs"].items()
                              if isinstance(v, str) and k.endswith(("ckpt_name", "lora_name", "vae_name"))}))
        jobs.append(Job(index, dict(ov), prompt, jid, ckpts))
    if problems:
        raise WorkflowError(source or wf.source, problems)
    return jobs


def prefix_problem(value: Any) -> str | None:
    """Why ``value`` cannot be a job's ``filename_prefix`` (None when it can). It is put under
    the job's folder, so it must be a relative path that stays there: backslashes count as
    slashes (as when saving) and '..' is judged after normalising ("a/../b" is "b")."""
    if not isinstance(value, str):
        return f"must be text, not {type(value).__name__}"
    if "\x00" in value:
        return f"{value!r} holds a NUL character"
    norm = value.replace("\\", "/").strip()
    if norm.startswith("/") or re.match(r"[A-Za-z]:", norm):
        return f"{value!r} is an absolute path; in a batch it must be relative to the job's folder <output>/<job id>/"
    if not norm or norm.endswith("/"):
        return f"{value!r} names no file"
    flat = posixpath.normpath(norm)
    if flat == ".." or flat.startswith("../"):
        return f"{value!r} climbs out of the job's folder <output>/<job id>/ with '..'; give a path inside it"
    return None


def _confine_prefixes(prompt: dict, jid: str, label: str) -> list[Problem]:
    """Put every ``filename_prefix`` (the input by which ComfyUI's savers and plugin savers
    name their files) under the job's folder, so that a rerun, which empties that folder
    first, leaves nothing behind; the problems of those that cannot be."""
    problems = []
    for nid, node in prompt.items():
        if PREFIX_INPUT not in node["inputs"]:
            continue
        value = node["inputs"][PREFIX_INPUT]
        if isinstance(value, list):  # a link: its text is known only when the job runs
            problems.append(Problem(f"{label}: {PREFIX_INPUT} is linked from node '{value[0]}'; in a batch it must "
                                    f"be a constant, to be put under the job's folder <output>/<job id>/",
                                    node=nid, input=PREFIX_INPUT))
            continue
        why = prefix_problem(value)
        if why:
            problems.append(Problem(f"{label}: {PREFIX_INPUT} {why}", node=nid, input=PREFIX_INPUT))
        else:
            node["inputs"][PREFIX_INPUT] = f"{jid}/{value}"
    return problems


def _describe(ov: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in ov.items()) or "no overrides"


# -- running -------------------------------------------------------------------------------
def written_files(outputs: dict) -> list[str]:
    """The files a run's UI outputs name, as ``type:subfolder/filename``."""
    from ..graph.executor import ui_files

    return [f"{item.get('type', 'output')}:{item.get('subfolder', '')}/{item['filename']}".replace(":/", ":")
            for ui in outputs.values() for item in ui_files(ui)]


def execute_job(executor: Executor, job: Job, listener: Callable | None = None, worker: str = "local") -> dict:
    """Run one job on ``executor``; the record of what happened (never raises for a node's failure)."""
    from ..graph import NodeExecutionError

    start = time.perf_counter()
    record = {"job_id": job.job_id, "index": job.index, "overrides": job.overrides, "seeds": job.seeds,
              "worker": worker, "status": "success", "files": [], "timings": {}, "error": None}
    try:
        wf = Workflow.from_api(job.prompt, f"job {job.job_id}")
        result = executor.run(wf, prompt_id=job.job_id, listener=listener)
        record["files"] = written_files(result.outputs)
        strays = _outside_job(result.outputs, job)
        if strays:  # a node that saves by another input, or a cached one naming another job's files
            record["status"] = "failed"
            record["error"] = (f"job {job.job_id}: files outside the job's folder <output>/{job.job_id}/ "
                               f"(a rerun could not clean them up): " + "; ".join(strays))
        record["timings"] = {k: round(v, 6) for k, v in result.timings.items()}
        record["executed"], record["cached"] = list(result.executed), list(result.cached)
    except NodeExecutionError as exc:
        record["status"], record["error"] = "failed", exc.format(debug=False)
    except (ValidationError, WorkflowError) as exc:
        record["status"], record["error"] = "failed", exc.format()
    record["seconds"] = round(time.perf_counter() - start, 6)
    return record


def in_job_folder(rel: str, jid: str) -> bool:
    """Whether ``rel`` (a path under the output folder, as a record lists it) is inside the
    job's folder once normalised."""
    flat = posixpath.normpath(rel.replace("\\", "/"))
    return flat.startswith(f"{jid}/") and not posixpath.isabs(flat) and "\x00" not in flat


def _outside_job(outputs: dict, job: Job) -> list[str]:
    """The output files a run's UI names outside the job's folder, each with its node."""
    from ..graph.executor import ui_files

    strays = []
    for nid, ui in outputs.items():
        for item in ui_files(ui):
            rel = f"{item.get('subfolder', '')}/{item['filename']}".lstrip("/")
            if item.get("type", "output") == "output" and not in_job_folder(rel, job.job_id):
                kind = job.prompt.get(nid, {}).get("class_type", "?")
                strays.append(f"node '{nid}' ({kind}) names output:{rel}")
    return strays


def clear_job_folder(output_dir: Path, jid: str) -> None:
    """Remove ``<output>/<jid>`` whatever it is: a folder (links in it are removed, never
    followed), a file, or a link (removed, not what it points to)."""
    folder = Path(output_dir) / jid
    try:
        if folder.is_symlink() or folder.is_file():
            folder.unlink()
        elif folder.exists():
            shutil.rmtree(folder)
    except OSError as exc:
        raise BatchError(f"{folder}: cannot clear what an unfinished run left: {exc.strerror or exc}") from None


def write_record(output_dir: Path, record: dict) -> None:
    """The job's record, atomically: it is the mark that the job is done."""
    write_atomic(Path(output_dir) / record["job_id"] / RECORD,
                 (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())


def read_record(output_dir: Path, jid: str) -> dict | None:
    folder = Path(output_dir) / jid
    if folder.is_symlink() or (folder / RECORD).is_symlink():
        return None  # a record must be the job's own, in its own folder
    try:
        record = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


class LocalRunner:
    """Runs jobs one after another in this process (one executor: models load once)."""

    name = "in-process"

    def __init__(self, executor: Executor):
        self.executor = executor

    def run(self, jobs: list[Job], on_done: Callable[[dict], None], on_progress: Callable[[Job, dict], None]):
        for job in jobs:
            record = execute_job(self.executor, job, lambda kind, data, job=job: on_progress(job, {**data, "event": kind}))
            record["attempts"] = 1
            on_done(record)

    def close(self) -> None:
        # the end of a batch: models and cached results go, and their memory back to the system
        models = self.executor.services.get("models")
        if models is not None and hasattr(models, "clear"):
            models.clear()
        self.executor.release()


def run_batch(jobs: list[Job], runner, output_dir: str | Path, *, progress: bool | None = None) -> BatchResult:
    """Run the jobs not already done under ``output_dir``; one progress bar covers them all."""
    output_dir = Path(output_dir)
    result = BatchResult()
    todo = []
    for job in jobs:
        record = read_record(output_dir, job.job_id)
        if record is not None and record.get("status") == "success":
            result.skipped.append(record)
        else:
            clear_job_folder(output_dir, job.job_id)  # what an unfinished run left
            todo.append(job)
    show = sys.stderr.isatty() if progress is None else progress
    bar = None
    if show:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), initial=len(result.skipped), desc="jobs", unit="job", file=sys.stderr)

    def on_done(record: dict) -> None:
        write_record(output_dir, record)
        (result.done if record["status"] == "success" else result.failed).append(record)
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"failed {len(result.failed)}" if result.failed else "")

    def on_progress(job: Job, data: dict) -> None:
        if bar is not None and data.get("event") == "progress":
            bar.set_postfix_str(f"{job.job_id} step {data['value']}/{data['max']}")

    start = time.perf_counter()
    try:
        runner.run(todo, on_done, on_progress)
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        if bar is not None:
            bar.close()
        result.seconds = time.perf_counter() - start
    return result
