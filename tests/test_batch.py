"""Batches in this process: jobs files, sweeps, job ids and output folders, records, skipping
what is done, a failing job beside good ones. (The Ray runner: tests/test_ray.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latentgraph.batch import (BatchError, LocalRunner, make_jobs, read_jobs_file, read_record, run_batch,
                               sweep_overrides)
from latentgraph.cli import main
from latentgraph.graph import Environment, Executor, Workflow, WorkflowError
from latentgraph.nodes import create_registry

ROOT = Path(__file__).resolve().parents[1]
TXT2IMG = ROOT / "workflows" / "txt2img.yaml"


def test_sweeps_and_grids():
    assert sweep_overrides(["sampler.seed=1..3"]) == [{"sampler.seed": 1}, {"sampler.seed": 2}, {"sampler.seed": 3}]
    assert sweep_overrides(["a.x=[1, 2]", "b.y=[p, q]"]) == [
        {"a.x": 1, "b.y": "p"}, {"a.x": 1, "b.y": "q"}, {"a.x": 2, "b.y": "p"}, {"a.x": 2, "b.y": "q"}]
    with pytest.raises(BatchError, match="the range '5..1' is empty"):
        sweep_overrides(["a.x=5..1"])
    with pytest.raises(BatchError, match="expected NODE.INPUT=VALUES"):
        sweep_overrides(["seed=1..3"])


def test_jobs_file(tmp_path):
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(f"workflow: {TXT2IMG}\ngrid:\n  sampler.seed: 1..2\njobs:\n  - {{sampler.cfg: 4.0}}\n"
                    "  - {sampler.cfg: 6.0, positive.text: a blue square on a red background}\n")
    workflow, overrides = read_jobs_file(jobs)
    assert workflow == TXT2IMG and len(overrides) == 4
    assert overrides[3] == {"sampler.seed": 2, "sampler.cfg": 6.0, "positive.text": "a blue square on a red background"}
    jobs.write_text("workflow: x.yaml\nsweep: {}\n")
    with pytest.raises(BatchError, match="jobs.yaml: unknown key 'sweep'"):
        read_jobs_file(jobs)
    jobs.write_text("workflow: x.yaml\n")
    with pytest.raises(BatchError, match="no jobs"):
        read_jobs_file(jobs)


def test_jobs_are_validated_all_at_once(tmp_path):
    registry = create_registry()
    wf = Workflow.load(TXT2IMG, registry)
    with pytest.raises(WorkflowError) as raised:
        make_jobs(wf, [{"sampler.seed": 1}, {"sampler.steps": 0}, {"nosuch.seed": 1}, {"sampler.seed": 1}],
                  registry, Environment(models_dir=tmp_path))
    text = raised.value.format()
    assert "job 1 (sampler.steps=0)" in text and "smaller than min of 1" in text
    assert "job 2: 'nosuch.seed' names no node" in text
    assert "job 3 (sampler.seed=1) is the same run as job 0" in text


def test_batch_runs_skips_what_is_done_and_records_everything(tmp_path):
    registry = create_registry()
    env = Environment(output_dir=tmp_path / "out", device="cpu")
    wf = Workflow.load(TXT2IMG, registry)
    jobs = make_jobs(wf, sweep_overrides(["sampler.seed=1..3", "sampler.steps=[4]"]), registry, env)
    assert len({j.job_id for j in jobs}) == 3 and all(len(j.job_id) == 16 for j in jobs)
    assert all(j.prompt["save"]["inputs"]["filename_prefix"] == f"{j.job_id}/txt2img" for j in jobs)
    assert jobs[0].checkpoints == ("latentgraph-shapes.safetensors",)
    runner = LocalRunner(Executor(registry, env))
    first = run_batch(jobs, runner, env.output_dir, progress=False)
    assert len(first.done) == 3 and not first.skipped and not first.failed
    for job in jobs:
        record = read_record(env.output_dir, job.job_id)
        assert record["status"] == "success" and record["overrides"] == job.overrides
        assert record["seeds"] == {"sampler.seed": job.overrides["sampler.seed"]}
        assert record["files"] == [f"output:{job.job_id}/txt2img_00001_.png"] and record["attempts"] == 1
        assert set(record["timings"]) >= {"sampler", "decode", "save"}
    pictures = {j.job_id: (env.output_dir / j.job_id / "txt2img_00001_.png").read_bytes() for j in jobs}
    assert len(set(pictures.values())) == 3  # three seeds, three pictures
    again = run_batch(jobs, runner, env.output_dir, progress=False)
    assert not again.done and len(again.skipped) == 3  # nothing run twice
    assert sorted(p.name for p in env.output_dir.iterdir()) == sorted(pictures)
    # an unfinished job (files but no record) runs again from a clean folder: same names, same bytes
    victim = jobs[1].job_id
    (env.output_dir / victim / "job.json").unlink()
    (env.output_dir / victim / "stray_00001_.png").write_bytes(b"half")
    third = run_batch(jobs, LocalRunner(Executor(registry, env)), env.output_dir, progress=False)  # a new process
    assert [r["job_id"] for r in third.done] == [victim] and len(third.skipped) == 2
    assert sorted(p.name for p in (env.output_dir / victim).iterdir()) == ["job.json", "txt2img_00001_.png"]
    assert (env.output_dir / victim / "txt2img_00001_.png").read_bytes() == pictures[victim]


def test_a_failing_job_is_reported_and_the_rest_go_on(tmp_path, capsys):
    jobs = tmp_path / "jobs.yaml"
    # LoadImage names a file per job; one of them is not an image
    (tmp_path / "input").mkdir()
    from PIL import Image

    for name in ("a.png", "c.png"):
        Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "input" / name)
    (tmp_path / "input" / "b.png").write_bytes(b"not a png")
    (tmp_path / "wf.yaml").write_text("nodes:\n  load: {type: LoadImage, image: a.png}\n"
                                      "  inv: {type: ImageInvert, image: load.IMAGE}\n"
                                      "  save: {type: SaveImage, images: inv, filename_prefix: inv}\n")
    jobs.write_text("workflow: wf.yaml\ngrid:\n  load.image: [a.png, b.png, c.png]\n")
    args = ["batch", str(jobs), "--output-dir", str(tmp_path / "out"), "--input-dir", str(tmp_path / "input"),
            "--no-progress", "--no-plugins"]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "batch: 3 jobs on in-process: 2 done, 0 already done, 1 failed" in captured.out
    assert "job 1 (" in captured.err and "LoadImage" in captured.err
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "out").glob("*/job.json"))]
    assert sorted(r["status"] for r in records) == ["failed", "success", "success"]
    assert main(args) == 1  # the failed one runs again (and fails again); the others are skipped
    assert "0 done, 2 already done, 1 failed" in capsys.readouterr().out
    # run --sweep goes through the same machinery
    assert main(["run", str(TXT2IMG), "--sweep", "sampler.seed=1..2", "--set", "sampler.steps=3",
                 "--output-dir", str(tmp_path / "sweep"), "--no-progress", "--no-plugins", "--device", "cpu"]) == 0
    assert "batch: 2 jobs on in-process: 2 done" in capsys.readouterr().out
    assert len(list((tmp_path / "sweep").glob("*/txt2img_00001_.png"))) == 2


def test_an_unreachable_ray_address_fails_fast():
    """Ray itself retries for minutes; a HOST:PORT that does not answer is refused at once."""
    import socket

    from latentgraph.batch.ray_runner import _check_reachable
    from latentgraph.graph import LatentgraphError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    with pytest.raises(LatentgraphError, match=f"cannot reach the Ray cluster at 127.0.0.1:{port}"):
        _check_reachable(f"127.0.0.1:{port}")
    _check_reachable("auto")  # other forms are left to Ray
