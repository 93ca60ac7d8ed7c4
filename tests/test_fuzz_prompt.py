"""POST /prompt fuzzed with hypothesis: valid-looking prompts over the toy nodes with every
field mutated (wrong types, huge numbers, NaN, deep nesting, unicode), and raw bytes. Every
answer must be 200 or 400 with a JSON body: never a 5xx, never an exception in the log.

The app runs without its worker (queued prompts are never executed), so nothing heavy runs.
bench/fuzz_prompt.py runs the same generators for longer with random seeds."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))

from toy_nodes import make_toy_registry  # noqa: E402

from latentgraph.graph import Environment  # noqa: E402
from latentgraph.server import SERVER, create_app  # noqa: E402

TOY_CLASSES = ["Number", "Add", "Scale", "Concat", "Ratio", "Show", "Fail", "Tick", "SlowCount", "Range", "Sum",
               "WhoAmI", "Big"]
INPUT_NAMES = ["value", "a", "b", "x", "factor", "sep", "invert", "steps", "wait", "n", "items", "label",
               "message", "path", "unknown"]

# -- the generators ---------------------------------------------------------------------------
numbers = st.one_of(
    st.integers(min_value=-(10 ** 30), max_value=10 ** 30),
    st.integers(min_value=-5, max_value=1005),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, -1, 2 ** 31, 2 ** 53 + 1, 2 ** 63, -(2 ** 63), 1e308, 5e-324]),
)
texts = st.one_of(st.text(max_size=40), st.sampled_from(["", ".", "..", "../x", "a/b", "\x00", "é☃𝄞", " " * 3,
                                                        "C:\\x", "%s%n", "1", "0"]))
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)


def nested(lo: int, hi: int):
    """Lists or objects nested lo..hi levels around a scalar (few draws, however deep)."""
    return st.builds(_wrap, scalars, st.integers(lo, hi), st.booleans())


def _wrap(leaf, depth: int, as_list: bool):
    for _ in range(depth):
        leaf = [leaf] if as_list else {"k": leaf}
    return leaf


junk = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(texts, inner, max_size=4)), max_leaves=8)
values = st.one_of(scalars, junk, nested(1, 8), nested(60, 200))  # past 64: MAX_JSON_DEPTH
links = st.one_of(
    st.tuples(st.sampled_from(["1", "2", "3", "n"]), st.integers(-2, 3)).map(list),
    st.lists(st.one_of(texts, numbers), max_size=3),
)
inputs = st.dictionaries(st.one_of(st.sampled_from(INPUT_NAMES), texts), st.one_of(values, links), max_size=5)
node = st.fixed_dictionaries({"class_type": st.one_of(st.sampled_from(TOY_CLASSES), texts, scalars)},
                             optional={"inputs": st.one_of(inputs, scalars, st.lists(scalars, max_size=3)),
                                       "_meta": st.one_of(st.dictionaries(texts, texts, max_size=2), scalars)})
good_prompt = st.builds(lambda v, steps: {"1": {"class_type": "Number", "inputs": {"value": v}},
                                          "2": {"class_type": "SlowCount", "inputs": {"x": ["1", 0], "steps": steps,
                                                                                     "wait": False}},
                                          "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}},
                        st.integers(-1000, 1000), st.integers(1, 1000))


def _mutate_prompt(prompt: dict, changes: list) -> dict:
    """Change some of a valid prompt's nodes, their class, inputs or input values (a change
    that no longer applies, after an earlier one replaced its node, is skipped)."""
    prompt = json.loads(json.dumps(prompt))
    for where, what, value in changes:
        node_id = ["1", "2", "3"][where % 3]
        target = prompt.get(node_id)
        if what == "node" or not isinstance(target, dict):
            prompt[node_id] = value
        elif what == "class":
            target["class_type"] = value
        elif what == "inputs" or not isinstance(target.get("inputs"), dict) or not target["inputs"]:
            target["inputs"] = value
        else:
            inputs = target["inputs"]
            inputs[sorted(inputs)[where % len(inputs)] if what == "value" else what] = value
    return prompt


prompt_changes = st.lists(st.tuples(st.integers(0, 8), st.sampled_from(["node", "class", "inputs", "value",
                                                                        "unknown"]),
                                    st.one_of(values, links, node, inputs)), min_size=1, max_size=3)
mutated = st.builds(_mutate_prompt, good_prompt, prompt_changes)
# a weighted choice (one_of would flatten the scalars' many branches and mostly send no object)
prompts = st.sampled_from([
    good_prompt, mutated, mutated, mutated, mutated,
    st.dictionaries(st.one_of(st.sampled_from(["1", "2", "3", "n"]), texts), st.one_of(node, scalars), max_size=5),
    st.one_of(scalars, st.lists(scalars, max_size=3)),  # no prompt object at all
]).flatmap(lambda strategy: strategy)
ids = st.one_of(st.none(), texts, st.uuids().map(str), numbers, st.lists(texts, max_size=2),
                st.text(min_size=129, max_size=300))


def good_or_bad(good, bad):
    """Three times in four a good value, so most bodies get past the field checks to validation."""
    return st.sampled_from([good, good, good, bad]).flatmap(lambda strategy: strategy)


FIELDS = {  # a good value or a bad one, for every body field
    "number": good_or_bad(st.integers(-100, 100), st.one_of(numbers, scalars, st.lists(numbers, max_size=2))),
    "front": good_or_bad(st.booleans(), scalars),
    "client_id": good_or_bad(st.uuids().map(lambda u: u.hex), ids),
    "prompt_id": good_or_bad(st.uuids().map(str), ids),
    "extra_data": good_or_bad(st.fixed_dictionaries({}, optional={
        "extra_pnginfo": good_or_bad(st.fixed_dictionaries({"workflow": junk}), values),
        "client_id": ids, "auth_token_comfy_org": texts, "x": values}), scalars),
    "partial_execution_targets": good_or_bad(st.lists(st.sampled_from(["1", "2", "3"]), max_size=3),
                                             st.one_of(st.lists(st.one_of(texts, scalars), max_size=4), scalars)),
}
bodies = st.builds(lambda prompt, extra: {"prompt": prompt, **extra}, prompts,
                   st.fixed_dictionaries({}, optional=FIELDS))


def _deep(n: int, opener: str, closer: str) -> bytes:
    return (opener * n + "1" + closer * n).encode()


raw_bodies = st.one_of(
    st.binary(max_size=200),
    st.sampled_from([b"", b"   ", b"null", b"[]", b"{", b'{"prompt": NaN}', b'{"prompt": {}, "number": Infinity}',
                     b'{"prompt": {}, "number": 1e999}', b'{"prompt": {}, "number": -Infinity}',
                     b'{"prompt": {"1": {"class_type": "Number", "inputs": {"value": NaN}}}}',
                     b'{"prompt": {}, "number": ' + b"9" * 5000 + b"}", b"\xff\xfe{}", b'"prompt"',
                     _deep(100_000, "[", "]"), _deep(3000, '{"a":', "}"), _deep(65, "[", "]")]),
    st.builds(lambda body, cut: json.dumps(body, allow_nan=True).encode()[:cut], bodies, st.integers(0, 400)),
)


def encode(body) -> bytes:
    """A generated body as the bytes a client would send (NaN and Infinity as JS writes them)."""
    try:
        return json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")
    except (ValueError, RecursionError):
        return b"{"


# -- the harness ------------------------------------------------------------------------------
class Target:
    """One app (toy registry, no worker) behind aiohttp's test client, on its own event loop."""

    def __init__(self, tmp: Path):
        from aiohttp.test_utils import TestClient, TestServer

        registry, _ = make_toy_registry()
        env = Environment(output_dir=tmp / "output", input_dir=tmp / "input", temp_dir=tmp / "temp",
                          models_dir=tmp / "models", device="cpu")
        app = create_app(registry, env, services={}, user_dir=tmp / "user", frontend="none")
        self.srv = app[SERVER]
        self.srv.worker = lambda: None  # queued prompts are never run
        self.loop = asyncio.new_event_loop()
        self.client = TestClient(TestServer(app, host="127.0.0.1"), loop=self.loop)
        self.loop.run_until_complete(self.client.start_server())
        self.count = 0
        self.statuses: collections.Counter = collections.Counter()

    def post(self, data: bytes) -> tuple[int, object]:
        async def go():
            resp = await self.client.post("/prompt", data=data, headers={"Content-Type": "application/json"})
            text = await resp.text()
            return resp.status, text

        status, text = self.loop.run_until_complete(go())
        self.count += 1
        self.statuses[status] += 1
        if self.count % 200 == 0:
            self.srv.queue.clear()  # keep the queue (and its journal) small
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        return status, body

    def check(self, data: bytes) -> str | None:
        """None when the answer is right, else what is wrong with it."""
        status, body = self.post(data)
        if status not in (200, 400):
            return f"status {status} for {data[:200]!r}: {body!r}"[:2000]
        if not isinstance(body, dict):
            return f"status {status} without a JSON object body for {data[:200]!r}"
        if status == 200 and not isinstance(body.get("prompt_id"), str):
            return f"200 without a prompt_id for {data[:200]!r}"
        return None

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.close()


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    t = Target(tmp_path_factory.mktemp("fuzz"))
    yield t
    t.close()


FUZZ = settings(max_examples=1500, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


@FUZZ
@given(body=bodies)
def test_structured_prompt_bodies_get_200_or_400(target, caplog, body):
    caplog.set_level(logging.WARNING)
    problem = target.check(encode(body))
    assert problem is None
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


@settings(FUZZ, max_examples=600)
@given(data=raw_bodies)
def test_raw_prompt_bodies_get_200_or_400(target, caplog, data):
    caplog.set_level(logging.WARNING)
    problem = target.check(data)
    assert problem is None
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_the_fuzz_ran_at_least_2000_cases(target):
    """Runs after the two fuzz tests (file order): the bodies were really sent, and enough of
    them were good enough to be queued (the generators reach past the field checks)."""
    assert target.count >= 2000
    assert set(target.statuses) == {200, 400}
    assert target.statuses[200] >= 100
