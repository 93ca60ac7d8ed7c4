"""The server's prompt queue and history: ComfyUI's numbering and order, deletion, history
shapes, running entries, persistence across a restart."""

from __future__ import annotations

import json
import threading

import pytest

from latentgraph.server.queue import MAX_HISTORY, History, PromptQueue


def queued(q: PromptQueue, pid: str, front: bool = False, number=None, extra=None):
    n = q.next_number(front, number)
    return q.put(n, pid, {"1": {"class_type": "X", "inputs": {}}}, extra or {"client_id": "c"}, ["1"])


def test_numbers_and_order_follow_comfyui():
    q = PromptQueue()
    a, b = queued(q, "a"), queued(q, "b")
    c = queued(q, "c", front=True)
    d = queued(q, "d", number=0.5)
    e = queued(q, "e")
    assert [a.number, b.number, c.number, d.number, e.number] == [0, 1, -2, 0.5, 3]
    assert [i.prompt_id for i in q.pending()] == ["c", "a", "d", "b", "e"]
    assert [q.get(timeout=0).prompt_id for _ in range(5)] == ["c", "a", "d", "b", "e"]
    assert q.get(timeout=0) is None


def test_equal_numbers_run_in_arrival_order():
    q = PromptQueue()
    for pid in "xyz":
        queued(q, pid, number=7)
    assert [q.get(timeout=0).prompt_id for _ in range(3)] == ["x", "y", "z"]


def test_snapshot_delete_clear_and_remaining():
    q = PromptQueue()
    changes = []
    q.on_change.append(lambda: changes.append(q.remaining()))
    for pid in "abcd":
        queued(q, pid, extra={"client_id": "c", "api_key_comfy_org": "secret"})
    running = q.get(timeout=0)
    snap = q.snapshot()
    assert [i[1] for i in snap["queue_running"]] == ["a"] and [i[1] for i in snap["queue_pending"]] == ["b", "c", "d"]
    assert snap["queue_pending"][0] == [1, "b", {"1": {"class_type": "X", "inputs": {}}}, {"client_id": "c"}, ["1"]]
    assert "secret" not in json.dumps(snap) and running.sensitive == {"api_key_comfy_org": "secret"}
    assert q.delete(["c", "a", "nope"]) == 1  # the running one stays
    assert q.remaining() == 3
    assert q.clear() == 2 and q.remaining() == 1
    q.done(running)
    assert q.remaining() == 0
    assert changes == [1, 2, 3, 4, 4, 3, 1, 0]
    with pytest.raises(ValueError, match="already queued"):
        queued(q, "b")
        queued(q, "b")


def test_get_blocks_until_a_prompt_arrives_and_close_releases_it():
    q = PromptQueue()
    got = []
    t = threading.Thread(target=lambda: got.append(q.get()))
    t.start()
    queued(q, "late")
    t.join(5)
    assert [i.prompt_id for i in got] == ["late"]
    t = threading.Thread(target=lambda: got.append(q.get()))
    t.start()
    q.close()
    t.join(5)
    assert got[-1] is None and not t.is_alive()


def run_one(h: History, q: PromptQueue, pid: str, success: bool = True):
    item = queued(q, pid)
    q.get(timeout=0)
    h.start(item)
    h.message(pid, "execution_start", {"prompt_id": pid, "timestamp": 1})
    h.message(pid, "execution_cached", {"nodes": [], "prompt_id": pid, "timestamp": 2})
    h.message(pid, "executing", {"node": "9", "display_node": "9", "prompt_id": pid})
    h.message(pid, "progress", {"value": 3, "max": 20, "node": "9", "prompt_id": pid})
    running = h.get(pid, include_running=True)
    h.message(pid, "executed", {"node": "9", "display_node": "9", "prompt_id": pid,
                                "output": {"images": [{"filename": f"{pid}.png", "subfolder": "", "type": "output"}]}})
    h.message(pid, "execution_success" if success else "execution_error", {"prompt_id": pid, "timestamp": 3})
    h.finish(pid, success)
    q.done(item)
    return running


def test_history_entries_have_comfyuis_shape_and_running_ones_are_readable(tmp_path):
    q, h = PromptQueue(), History(tmp_path / "history")
    running = run_one(h, q, "p1")
    assert running["status"] == {"status_str": "running", "completed": False, "node": "9",
                                 "progress": {"node": "9", "value": 3, "max": 20},
                                 "messages": [["execution_start", {"prompt_id": "p1", "timestamp": 1}],
                                              ["execution_cached", {"nodes": [], "prompt_id": "p1", "timestamp": 2}]]}
    entry = h.get("p1")
    assert entry["prompt"][:2] == [0, "p1"] and entry["prompt"][4] == ["1"]
    assert entry["outputs"] == {"9": {"images": [{"filename": "p1.png", "subfolder": "", "type": "output"}]}}
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    assert [m[0] for m in entry["status"]["messages"]] == ["execution_start", "execution_cached", "execution_success"]
    assert entry["meta"] == {"9": {"node_id": "9", "display_node": "9", "parent_node": None, "real_node_id": "9"}}
    run_one(h, q, "p2", success=False)
    assert h.get("p2")["status"]["status_str"] == "error" and h.get("p2")["status"]["completed"] is False
    # a started prompt is hidden from /history unless asked for (clients poll it to learn of the end)
    item = queued(q, "p3")
    h.start(item)
    assert h.get("p3") is None and list(h.items()) == ["p1", "p2"]
    assert list(h.items(include_running=True)) == ["p1", "p2", "p3"]
    assert list(h.items(max_items=1)) == ["p2"] and list(h.items(max_items=1, offset=0)) == ["p1"]


def test_history_survives_a_restart_and_deletes_from_disk(tmp_path):
    q, h = PromptQueue(), History(tmp_path / "history")
    for pid in ("a", "b", "c"):
        run_one(h, q, pid)
    again = History(tmp_path / "history")
    assert list(again.items()) == ["a", "b", "c"]
    assert again.get("b") == h.get("b")
    again.delete(["b"])
    assert sorted(p.name for p in (tmp_path / "history").iterdir()) == ["a.json", "c.json"]
    again.clear()
    assert list((tmp_path / "history").iterdir()) == [] and len(History(tmp_path / "history")) == 0


def test_history_keeps_at_most_max_items_and_skips_bad_files(tmp_path):
    q, h = PromptQueue(), History(tmp_path / "history", max_items=3)
    for i in range(5):
        run_one(h, q, f"p{i}")
    assert list(h.items()) == ["p2", "p3", "p4"]
    assert sorted(p.name for p in (tmp_path / "history").iterdir()) == ["p2.json", "p3.json", "p4.json"]
    (tmp_path / "history" / "broken.json").write_text("{not json")
    assert list(History(tmp_path / "history").items()) == ["p2", "p3", "p4"]
    assert MAX_HISTORY == 10_000


def test_odd_prompt_ids_are_never_paths(tmp_path):
    q, h = PromptQueue(), History(tmp_path / "history")
    run_one(h, q, "../escape")
    assert h.get("../escape") is not None
    assert not (tmp_path / "escape.json").exists() and not list((tmp_path / "history").glob("*"))
