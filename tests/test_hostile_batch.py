"""Batches against hostile filename prefixes and output trees (issue 14, section 5): a job's
files stay in <output>/<job id>/, so a rerun after a kill (which empties that folder first)
never leaves extra files. Prefixes that would leave it are refused when the jobs are
validated, before anything runs, naming the jobs file, the job, the node and the input; the
same for run --sweep and the Ray runner (which share make_jobs, and whose driver and workers
check the files they move)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from latentgraph.batch import (LocalRunner, execute_job, in_job_folder, make_jobs, prefix_problem, read_record,
                               run_batch)
from latentgraph.cli import main
from latentgraph.graph import Environment, Executor, Workflow, WorkflowError
from latentgraph.nodes import create_registry
from latentgraph.plugins import load_plugins

SAVERS = Path(__file__).parent / "fixtures" / "plugins" / "hostile"
WORKFLOW = ("nodes:\n  img: {type: EmptyImage, width: 8, height: 8, batch_size: 1, color: 0}\n"
            "  save: {type: SaveImage, images: img, filename_prefix: pic}\n")


def tree(root: Path) -> dict[str, bytes | str]:
    """Every path under ``root`` with its bytes (a link: where it points; a folder: '<dir>')."""
    out: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        out[rel] = f"-> {os.readlink(path)}" if path.is_symlink() else "<dir>" if path.is_dir() else path.read_bytes()
    return out


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "wf.yaml").write_text(WORKFLOW)
    return tmp_path


def batch(folder: Path, jobs: str, *extra: str) -> int:
    (folder / "jobs.yaml").write_text(f"workflow: wf.yaml\n{jobs}")
    return main(["batch", str(folder / "jobs.yaml"), "--output-dir", str(folder / "out"), "--no-progress",
                 "--no-plugins", "--device", "cpu", *extra])


CLIMBS = "climbs out of the job's folder <output>/<job id>/ with '..'; give a path inside it"
ABSOLUTE = "is an absolute path; in a batch it must be relative to the job's folder <output>/<job id>/"


@pytest.mark.parametrize("prefix, why", [
    ("../pic", CLIMBS),
    ("sub/../../pic", CLIMBS),                # inside the output folder, outside the job's
    ("a/b/../../../other/pic", CLIMBS),
    ("..", CLIMBS),
    ("..\\pic", CLIMBS),                      # backslashes are slashes when saving
    ("sub\\..\\..\\..\\pic", CLIMBS),
    (" ../pic", CLIMBS),                      # saving strips the blanks
    ("/tmp/pic", ABSOLUTE),
    ("\\\\server\\share\\pic", ABSOLUTE),
    ("C:\\pic", ABSOLUTE),
    ("c:pic", ABSOLUTE),
    ("sub/", "names no file"),
    ("", "names no file"),
    ("pic\x00.png", "holds a NUL character"),
])
def test_a_prefix_that_leaves_the_job_folder_is_refused_before_anything_runs(folder, capsys, prefix, why):
    before = tree(folder)
    jobs = f"jobs:\n  - {{img.color: 1}}\n  - {{img.color: 2, save.filename_prefix: {json.dumps(prefix)}}}\n"
    assert batch(folder, jobs) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"{folder / 'jobs.yaml'}: node 'save', input 'filename_prefix': job 1 (img.color=2, "
                   f"save.filename_prefix={prefix!r}): filename_prefix {prefix!r} {why}")
    after = tree(folder)
    assert after.pop("jobs.yaml") and after == before  # job 0 did not run either: no out/ at all


def test_every_bad_prefix_of_every_job_is_listed_at_once(folder, capsys):
    jobs = "jobs:\n  - {save.filename_prefix: ../a}\n  - {save.filename_prefix: /b}\n  - {save.filename_prefix: ok}\n"
    assert batch(folder, jobs) == 1
    lines = capsys.readouterr().err.strip().split("\n")
    assert lines[0] == f"{folder / 'jobs.yaml'}: 2 problems:"
    assert lines[1] == ("  - node 'save', input 'filename_prefix': job 0 (save.filename_prefix='../a'): "
                        f"filename_prefix '../a' {CLIMBS}")
    assert lines[2] == ("  - node 'save', input 'filename_prefix': job 1 (save.filename_prefix='/b'): "
                        f"filename_prefix '/b' {ABSOLUTE}")
    assert len(lines) == 3 and not (folder / "out").exists()


def test_a_linked_prefix_is_refused(folder, capsys):
    (folder / "wf.yaml").write_text(WORKFLOW.replace("filename_prefix: pic", "filename_prefix: {from: name, output: STRING}")
                                    + "  name: {type: PrimitiveString, value: ../../outside}\n")
    assert batch(folder, "grid:\n  img.color: [1, 2]\n") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"{folder / 'jobs.yaml'}: 2 problems:\n  - node 'save', input 'filename_prefix': job 0 "
                          f"(img.color=1): filename_prefix is linked from node 'name'; in a batch it must be a "
                          f"constant, to be put under the job's folder <output>/<job id>/")
    assert not (folder / "out").exists() and not (folder.parent / "outside_00001_.png").exists()


def test_prefixes_that_stay_inside_are_kept_under_the_job_folder(folder, capsys):
    jobs = ("jobs:\n  - {img.color: 1, save.filename_prefix: 'a/../b'}\n"
            "  - {img.color: 2, save.filename_prefix: 'sub\\\\pic'}\n  - {img.color: 3, save.filename_prefix: './c'}\n")
    assert batch(folder, jobs) == 0
    ids = {r["index"]: r["job_id"] for r in (json.loads(p.read_text()) for p in (folder / "out").glob("*/job.json"))}
    files = sorted(k for k, v in tree(folder / "out").items() if v != "<dir>")
    assert files == sorted([f"{ids[0]}/b_00001_.png", f"{ids[0]}/job.json", f"{ids[1]}/sub/pic_00001_.png",
                            f"{ids[1]}/job.json", f"{ids[2]}/c_00001_.png", f"{ids[2]}/job.json"])
    assert read_record(folder / "out", ids[1])["files"] == [f"output:{ids[1]}/sub/pic_00001_.png"]


def test_run_sweep_refuses_the_same_prefixes(folder, capsys):
    before = tree(folder)
    code = main(["run", str(folder / "wf.yaml"), "--sweep", "img.color=[1, 2]", "--set", "save.filename_prefix=../up",
                 "--output-dir", str(folder / "out"), "--no-progress", "--no-plugins", "--device", "cpu"])
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"{folder / 'wf.yaml'}: 2 problems:\n  - node 'save', input 'filename_prefix': "
                          f"job 0 (img.color=1): filename_prefix '../up' {CLIMBS}")
    assert tree(folder) == before


def test_prefix_problem_on_its_own():
    assert [prefix_problem(p) for p in ("pic", "a/b/c", "a/../b", "x..y", "..pic", "sub/..pic")] == [None] * 6
    assert prefix_problem(7) == "must be text, not int"
    assert in_job_folder("j/a.png", "j") and in_job_folder("j/s/../a.png", "j")
    assert not any(in_job_folder(rel, "j") for rel in ("a.png", "j/../a.png", "jj/a.png", "/j/a.png", "j\\..\\x"))


# -- the output tree across kills and reruns ---------------------------------------------------
def _jobs(folder: Path, registry, env, prefix="pic"):
    wf = Workflow.load(folder / "wf.yaml", registry)
    return make_jobs(wf, [{"img.color": c, "save.filename_prefix": prefix} for c in (1, 2, 3)], registry, env)


class KilledRunner(LocalRunner):
    """Dies (Ctrl-C) right after job ``victim`` wrote its image, before its record."""

    def __init__(self, executor, victim: int):
        super().__init__(executor)
        self.victim = victim

    def run(self, jobs, on_done, on_progress):
        def listener(kind, data):
            if kind == "executed":
                raise KeyboardInterrupt

        for job in jobs:
            if job.index == self.victim:
                execute_job(self.executor, job, listener)
            record = execute_job(self.executor, job)
            record["attempts"] = 1
            on_done(record)


def test_a_rerun_after_a_kill_leaves_exactly_the_files_of_a_clean_run(folder):
    registry = create_registry()
    clean_env = Environment(output_dir=folder / "clean", device="cpu")
    jobs = _jobs(folder, registry, clean_env, "deep/pic")
    run_batch(jobs, LocalRunner(Executor(registry, clean_env)), clean_env.output_dir, progress=False)
    clean = {k: v for k, v in tree(clean_env.output_dir).items() if not k.endswith("job.json")}
    assert len([k for k, v in clean.items() if v != "<dir>"]) == 3

    env = Environment(output_dir=folder / "out", device="cpu")
    killed = run_batch(jobs, KilledRunner(Executor(registry, env), victim=1), env.output_dir, progress=False)
    assert killed.interrupted and [r["index"] for r in killed.done] == [0]
    victim = jobs[1].job_id
    assert (env.output_dir / victim / "deep" / "pic_00001_.png").is_file() and read_record(env.output_dir, victim) is None
    (env.output_dir / victim / "deep" / ".pic_00002_.png.123.tmp").write_bytes(b"half")  # a write cut short
    again = run_batch(jobs, LocalRunner(Executor(registry, env)), env.output_dir, progress=False)
    assert [r["index"] for r in again.done] == [1, 2] and [r["index"] for r in again.skipped] == [0]
    after = tree(env.output_dir)
    assert {k: v for k, v in after.items() if not k.endswith("job.json")} == clean  # same names, same bytes
    assert sorted(k for k in after if k.endswith("job.json")) == sorted(f"{j.job_id}/job.json" for j in jobs)


def test_links_in_and_at_the_job_folder_are_removed_never_followed(folder):
    registry = create_registry()
    env = Environment(output_dir=folder / "out", device="cpu")
    jobs = _jobs(folder, registry, env, "sub/pic")
    outside = folder / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    fake = folder / "fake.json"
    fake.write_text(json.dumps({"job_id": jobs[2].job_id, "status": "success"}))
    env.output_dir.mkdir()
    (env.output_dir / jobs[0].job_id).symlink_to(outside, target_is_directory=True)  # the job folder is a link
    (env.output_dir / jobs[1].job_id).mkdir()
    (env.output_dir / jobs[1].job_id / "sub").symlink_to(outside, target_is_directory=True)  # a link inside it
    (env.output_dir / jobs[2].job_id).mkdir()
    (env.output_dir / jobs[2].job_id / "job.json").symlink_to(fake)  # a record that is not the job's own
    before = tree(outside), fake.read_bytes()
    result = run_batch(jobs, LocalRunner(Executor(registry, env)), env.output_dir, progress=False)
    assert len(result.done) == 3 and not result.skipped and not result.failed
    assert (tree(outside), fake.read_bytes()) == before
    for job in jobs:
        path = env.output_dir / job.job_id
        assert not path.is_symlink() and not (path / "sub").is_symlink() and not (path / "job.json").is_symlink()
        assert sorted(p.name for p in (path / "sub").iterdir()) == ["pic_00001_.png"]


# -- savers of plugins, and the Ray runner's checks ---------------------------------------------
@pytest.fixture(scope="module")
def plugin_registry():
    registry = create_registry()
    load_plugins(registry, [SAVERS], entry_points=False)
    return registry


def test_a_plugin_saver_using_filename_prefix_is_confined(folder, plugin_registry):
    env = Environment(output_dir=folder / "out", device="cpu")
    wf = Workflow()
    wf.add("note", "SaveText", text="hi", filename_prefix="notes/n")
    jobs = make_jobs(wf, [{"note.text": "one"}, {"note.text": "two"}], plugin_registry, env)
    with pytest.raises(WorkflowError, match=r"node 'note', input 'filename_prefix': job 0 \(note.filename_prefix="
                                            r"'\.\./n'\): filename_prefix '\.\./n' climbs out"):
        make_jobs(wf, [{"note.filename_prefix": "../n"}], plugin_registry, env)
    run_batch(jobs, LocalRunner(Executor(plugin_registry, env)), env.output_dir, progress=False)
    assert {k: v for k, v in tree(env.output_dir).items() if k.endswith(".txt")} == {
        f"{jobs[0].job_id}/notes/n_00001_.txt": b"one", f"{jobs[1].job_id}/notes/n_00001_.txt": b"two"}


def test_a_saver_that_names_files_outside_fails_its_job(folder, plugin_registry):
    """A saver naming its file by another input cannot be put under the job's folder: the job
    fails, saying which node and file, instead of a record claiming a clean job."""
    env = Environment(output_dir=folder / "out", device="cpu")
    wf = Workflow()
    wf.add("note", "SaveTextAs", text="hi", name="loose.txt")
    jobs = make_jobs(wf, [{"note.text": "one"}], plugin_registry, env)
    result = run_batch(jobs, LocalRunner(Executor(plugin_registry, env)), env.output_dir, progress=False)
    jid = jobs[0].job_id
    assert not result.done and result.failed[0]["error"] == (
        f"job {jid}: files outside the job's folder <output>/{jid}/ (a rerun could not clean them up): "
        f"node 'note' (SaveTextAs) names output:loose.txt")
    # the limit of refusing at validation: what such a node writes, it has written
    assert sorted(tree(env.output_dir)) == [jid, f"{jid}/job.json", "loose.txt"]


def test_the_ray_worker_and_driver_move_only_files_inside_the_job_folder(folder, plugin_registry):
    from latentgraph.batch.ray_runner import BatchWorker, RayRunner, _within

    env = Environment(output_dir=folder / "out", device="cpu")
    wf = Workflow()
    wf.add("note", "SaveText", text="hi", filename_prefix="n")
    wf.add("loose", "SaveTextAs", text="hi", name="loose.txt")
    worker = BatchWorker({"device": "cpu"}, [str(SAVERS)], True, "w0")
    try:
        job = make_jobs(wf, [{}], plugin_registry, env)[0]
        reply = worker.run(job)
        assert reply["record"]["status"] == "failed" and "node 'loose' (SaveTextAs) names output:loose.txt" in \
            reply["record"]["error"]
        assert reply["files"] == {f"{job.job_id}/n_00001_.txt": b"hi"}  # the stray is not sent
    finally:
        worker.cleanup()
    driver = object.__new__(RayRunner)  # the driver's side alone: no cluster needed
    driver.output_dir, driver.held = env.output_dir, {0: set()}
    done = []
    record = {"job_id": job.job_id, "status": "success", "files": []}
    driver._store({"record": record, "files": {f"{job.job_id}/../up.txt": b"x"}}, job, 0, {job.job_id: 1}, done.append)
    assert done[0]["status"] == "failed" and done[0]["error"] == (
        f"job {job.job_id}: its worker sent files outside the job's folder: {job.job_id}/../up.txt")
    assert not env.output_dir.exists() and not (folder / "up.txt").exists()
    assert _within(folder, "a", "b.png") == folder / "a" / "b.png"
    assert [_within(folder, s, n) for s, n in (("..", "x"), ("", "../x"), ("/etc", "x"), ("", "/x"), ("a\\..\\..", "x"),
                                                ("", ""), ("C:", "x"))] == [None] * 7


# -- jobs files and sweeps that would expand into too much ------------------------------------
@pytest.mark.parametrize("jobs, message", [
    ("grid:\n" + "".join(f"  n{i}.seed: 0..9\n" for i in range(6)),
     "grid: the number of jobs exceeds the limit jobs = 100,000 jobs (found 1,000,000)"),
    ("grid:\n  save.seed: 0..1000000000000\n",
     "grid: save.seed: the number of jobs exceeds the limit jobs = 100,000 jobs (found 1,000,000,000,001)"),
    ("grid:\n  a.seed: &x [1, 2]\n  b.seed: *x\n",
     "3: YAML anchors (&x) are not allowed in latentgraph's YAML files (they can expand a small file into "
     "gigabytes): write the value out (column 11)"),
])
def test_a_jobs_file_that_expands_too_far_is_refused_before_any_job_is_made(folder, capsys, jobs, message):
    assert batch(folder, jobs) == 1
    assert message in capsys.readouterr().err
    assert not (folder / "out").exists()


def test_a_huge_jobs_file_is_refused_by_its_size_before_it_is_read(folder, capsys):
    with open(folder / "jobs.yaml", "wb") as f:
        f.write(b"workflow: wf.yaml\n# ")
        f.truncate(5 * 2**20)  # sparse: 5 MiB on disk costs nothing
    assert main(["batch", str(folder / "jobs.yaml"), "--output-dir", str(folder / "out"), "--no-plugins"]) == 1
    assert (f"{folder}/jobs.yaml: the settings file exceeds the limit settings_file_bytes = 4,194,304 bytes "
            f"(found 5,242,880)") in capsys.readouterr().err
    assert not (folder / "out").exists()


@pytest.mark.parametrize("sweep, message", [
    (["save.seed=0..99999999999"], "--sweep: save.seed: the number of jobs exceeds the limit jobs = 100,000 jobs"),
    (["save.seed=0..999", "img.width=0..999"], "--sweep: the number of jobs exceeds the limit jobs = 100,000 jobs "
                                               "(found 1,000,000)"),
    (["save.seed=&a [1, *a]"], "--sweep save.seed: cannot read the values: YAML anchors (&a) are not allowed"),
    (["save.seed=" + "[" * 200 + "]" * 200], "--sweep save.seed: cannot read the values: the YAML's nesting"),
    (["save.seed=[" + "1," * 60_000 + "]"], "--sweep save.seed: cannot read the values: the values exceeds the limit "
                                          "set_value_chars = 100,000 characters (found 120,002)"),
])
def test_run_sweep_refuses_what_would_expand_too_far(folder, capsys, sweep, message):
    args = ["run", str(folder / "wf.yaml"), "--output-dir", str(folder / "out"), "--no-plugins", "--no-progress"]
    for s in sweep:
        args += ["--sweep", s]
    assert main(args) == 1
    assert message in capsys.readouterr().err
    assert not (folder / "out").exists()
