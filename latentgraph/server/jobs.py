"""The jobs API that ComfyUI's frontend (1.58) uses instead of /queue and /history: one list of
jobs (pending, in progress, completed, failed, cancelled) with filters, sorting, pages, one job
in full, and cancelling."""

from __future__ import annotations

import json
import uuid

from aiohttp import web

from .limits import BadInput, parse_json, query_int

STATUSES = ("pending", "in_progress", "completed", "failed", "cancelled")
PREVIEW_MEDIA = ("images", "video", "audio", "3d")
_END_MESSAGES = ("execution_success", "execution_error", "execution_interrupted")
MAX_JOBS_PAGE = 1_000_000  # limit and offset of GET /jobs (the history holds at most 10,000)


def _error(status: int, message: str, **extra) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _workflow_id(extra: dict) -> str | None:
    workflow = (extra.get("extra_pnginfo") or {}).get("workflow")
    return workflow.get("id") if isinstance(workflow, dict) else None


def _compact(job: dict) -> dict:
    return {k: v for k, v in job.items() if v is not None}


def queued_job(item, status: str) -> dict:
    extra = item.extra_data
    return _compact({"id": item.prompt_id, "status": status, "priority": item.as_list()[0],
                     "create_time": extra.get("create_time", 0), "outputs_count": 0,
                     "workflow_id": _workflow_id(extra)})


def history_job(pid: str, entry: dict, full: bool = False) -> dict:
    number, _, prompt, extra, _ = entry["prompt"]
    status = entry.get("status") or {}
    messages = {kind: data for kind, data in status.get("messages", [])}
    if status.get("status_str") == "success" or not status:
        state = "completed"
    else:
        state = "cancelled" if "execution_interrupted" in messages else "failed"
    ends = [messages[k]["timestamp"] for k in _END_MESSAGES if k in messages and "timestamp" in messages[k]]
    count, preview = 0, None
    for node_id, ui in (entry.get("outputs") or {}).items():
        for key, items in (ui or {}).items():
            if key == "animated" or not isinstance(items, list):
                continue
            count += len(items)
            if key in PREVIEW_MEDIA:
                for item in items:
                    if isinstance(item, dict) and (preview is None or
                                                   (preview.get("type") != "output" and item.get("type") == "output")):
                        preview = {**item, "nodeId": node_id, "mediaType": key}
    job = {"id": pid, "status": state, "priority": number, "create_time": extra.get("create_time", 0),
           "execution_start_time": messages.get("execution_start", {}).get("timestamp"),
           "execution_end_time": ends[0] if ends else None,
           "execution_error": messages.get("execution_error"), "outputs_count": count,
           "preview_output": preview, "workflow_id": _workflow_id(extra)}
    if full:
        job.update(outputs=entry.get("outputs") or {}, execution_status=status,
                   workflow={"prompt": prompt, "extra_data": extra})
    return _compact(job)


def all_jobs(srv) -> dict[str, dict]:
    jobs: dict[str, dict] = {}
    for pid, entry in srv.history.all_entries():
        if entry["status"].get("status_str") != "running":
            jobs[pid] = history_job(pid, entry)
    for item in srv.queue.running():
        jobs[item.prompt_id] = queued_job(item, "in_progress")
    for item in srv.queue.pending():
        jobs[item.prompt_id] = queued_job(item, "pending")
    return jobs


class JobRoutes:
    """The jobs routes over one server (its queue, history and executor)."""

    def __init__(self, srv):
        self.srv = srv

    def routes(self) -> list:
        return [("GET", "/jobs", self.list_jobs), ("POST", "/jobs/cancel", self.cancel_jobs),
                ("GET", "/jobs/{job_id}", self.get_job), ("POST", "/jobs/{job_id}/cancel", self.cancel_job)]

    async def list_jobs(self, request: web.Request) -> web.Response:
        srv = self.srv
        q = request.query
        wanted = [s for s in q.get("status", "").split(",") if s] or list(STATUSES)
        bad = [s for s in wanted if s not in STATUSES]
        if bad:
            return _error(400, f"Invalid status value(s): {', '.join(bad)}. Valid values: {', '.join(STATUSES)}")
        sort_by, order = q.get("sort_by", "created_at"), q.get("sort_order", "desc")
        if sort_by not in ("created_at", "execution_duration"):
            return _error(400, "sort_by must be 'created_at' or 'execution_duration'")
        if order not in ("asc", "desc"):
            return _error(400, "sort_order must be 'asc' or 'desc'")
        try:
            limit = query_int(q, "limit", None, 1, MAX_JOBS_PAGE)
            # a negative offset counts as 0, as in ComfyUI
            offset = max(query_int(q, "offset", 0, -MAX_JOBS_PAGE, MAX_JOBS_PAGE), 0)
        except BadInput as exc:
            return _error(400, str(exc))
        jobs = [j for j in all_jobs(srv).values() if j["status"] in wanted]
        if "workflow_id" in q:
            jobs = [j for j in jobs if j.get("workflow_id") == q["workflow_id"]]
        if "ids" in q:
            ids = {i for i in q["ids"].split(",") if i}
            jobs = [j for j in jobs if j["id"] in ids]
        if sort_by == "created_at":
            key = lambda j: j.get("create_time", 0)  # noqa: E731
        else:
            key = lambda j: (j.get("execution_end_time") or 0) - (j.get("execution_start_time") or 0)  # noqa: E731
        jobs.sort(key=key, reverse=order == "desc")
        page = jobs[offset:] if limit is None else jobs[offset:offset + limit]
        return web.json_response({"jobs": page, "pagination": {"offset": offset, "limit": limit, "total": len(jobs),
                                                               "has_more": offset + len(page) < len(jobs)}},
                                 dumps=lambda o: json.dumps(o, default=str))


    async def get_job(self, request: web.Request) -> web.Response:
        srv = self.srv
        pid = request.match_info.get("job_id", "")
        if not pid:
            return _error(400, "job_id is required")
        for item in srv.queue.running():
            if item.prompt_id == pid:
                return web.json_response(queued_job(item, "in_progress"))
        for item in srv.queue.pending():
            if item.prompt_id == pid:
                return web.json_response(queued_job(item, "pending"))
        entry = srv.history.get(pid)
        if entry is not None:
            return web.json_response(history_job(pid, entry, full=True), dumps=lambda o: json.dumps(o, default=str))
        return _error(404, "Job not found")


    async def cancel_job(self, request: web.Request) -> web.Response:
        return web.json_response({"cancelled": _cancel(self.srv, request.match_info["job_id"])})


    async def cancel_jobs(self, request: web.Request) -> web.Response:
        srv = self.srv
        try:
            body = parse_json(await request.read() or b"null")
        except BadInput as exc:
            return _error(400, f"Request body must be valid JSON: {exc}")
        ids = body.get("job_ids") if isinstance(body, dict) else None
        if not isinstance(ids, list):
            return _error(400, "job_ids must be a list")
        invalid = [i for i in ids if not _is_uuid(i)]
        if invalid:
            return _error(400, "job_ids must be UUIDs", invalid_ids=invalid)
        known = set(all_jobs(srv))
        unknown = [i for i in ids if i not in known]
        if unknown:
            return _error(404, "Job(s) not found", unknown_ids=unknown)
        results = [_cancel(srv, i) for i in ids]
        return web.json_response({"cancelled": any(results)})


def _cancel(srv, pid: str) -> bool:
    if srv.interrupt(pid):
        return True
    return srv.queue.delete([pid]) > 0


def _is_uuid(value) -> bool:
    try:
        uuid.UUID(str(value))
        return isinstance(value, str)
    except ValueError:
        return False

