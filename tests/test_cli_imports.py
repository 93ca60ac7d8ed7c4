"""What the CLI imports (issue 17: "the CLI feels instant"): `nodes`, `validate`, `convert` and
`--help` import neither torch nor transformers; `run` imports torch but not transformers; the
node declarations built without torch are the ones built with everything imported; and the two
pieces that replaced transformers on the run path (the CLIP BPE and the CLIP text transformer)
give transformers' results exactly. No timings here: bench/cli.py measures those."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from latentgraph.graph import Environment, NodeRegistry
from latentgraph.graph.lazy import Lazy, is_resolved, lazy, unwrap

ROOT = Path(__file__).resolve().parents[1]
TXT2IMG = ROOT / "workflows" / "txt2img.yaml"

# Runs latentgraph.cli.main in a fresh interpreter and reports, as the last line of stdout,
# the exit code and which heavy modules ended up imported.
PROBE = textwrap.dedent("""
    import json, sys
    from latentgraph.cli import main
    try:
        rc = main(sys.argv[1:])
    except SystemExit as exc:  # --help
        rc = exc.code
    heavy = ("torch", "transformers", "scipy", "aiohttp", "kornia", "spandrel", "safetensors.torch")
    print(json.dumps({"rc": rc, "imported": [m for m in heavy if m in sys.modules]}))
""")


def probe(*args: str, cwd: Path) -> dict:
    env = dict(os.environ, PYTHONWARNINGS="ignore", LATENTGRAPH_CONFIG=str(cwd / "config.yaml"))
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A folder with model files the combos list, an input image, and the demo workflow."""
    for folder, name in (("checkpoints", "a.safetensors"), ("loras", "b.safetensors"),
                         ("vae", "c.safetensors"), ("upscale_models", "d.pth")):
        (tmp_path / "models" / folder).mkdir(parents=True)
        (tmp_path / "models" / folder / name).write_bytes(b"")
    (tmp_path / "input").mkdir()
    (tmp_path / "input" / "e.png").write_bytes(b"")
    (tmp_path / "flow.yaml").write_text(TXT2IMG.read_text())
    (tmp_path / "config.yaml").write_text("custom_nodes: []\n")  # not the user's own config
    return tmp_path


@pytest.mark.parametrize("args", [
    ("nodes",), ("nodes", "--json"), ("nodes", "--missing"), ("--help",), ("nodes", "--plugins"),
    ("validate", "flow.yaml"), ("validate", "flow.yaml", "--json"), ("convert", "flow.yaml", "--to", "api"),
])
def test_fast_commands_import_no_torch(work, args):
    got = probe(*args, cwd=work)
    assert got == {"rc": 0, "imported": []}


def test_validate_of_a_bad_workflow_still_imports_no_torch(work):
    (work / "bad.yaml").write_text("nodes:\n  s: {type: KSampler, steps: -3}\n")
    got = probe("validate", "bad.yaml", cwd=work)
    assert got == {"rc": 1, "imported": []}


def test_run_of_the_demo_imports_torch_but_not_transformers(work):
    got = probe("run", "flow.yaml", "--output-dir", "out", "--no-progress", cwd=work)
    assert got["rc"] == 0
    assert "torch" in got["imported"] and "transformers" not in got["imported"]
    assert "scipy" not in got["imported"]  # the normal scheduler and euler need no scipy
    assert (work / "out" / "txt2img_00001_.png").stat().st_size > 0


def test_declarations_without_torch_equal_those_with_everything_imported(work):
    code = ("import json, sys\nfrom pathlib import Path\nfrom latentgraph.nodes import create_registry\n"
            "from latentgraph.graph import Environment\n"
            "env = Environment(models_dir=Path('models'), input_dir=Path('input'), output_dir=Path('output'),"
            " temp_dir=Path('temp'))\n"
            "info = create_registry().object_info(env)\n"
            "print(json.dumps({'torch': 'torch' in sys.modules, 'info': info}, default=repr))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=work, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    cold = json.loads(proc.stdout)
    assert cold["torch"] is False

    from latentgraph import nodes

    for module in nodes.BUILTIN_MODULES:  # every lazy import of every node module, imported now
        for value in list(vars(module).values()):
            if type(value) is Lazy:
                unwrap(value)
    # every folder in the work dir on both sides: LoadImageOutput lists output/ (a `make demo`
    # in the checkout must not show up on one side only)
    env = Environment(models_dir=work / "models", input_dir=work / "input", output_dir=work / "output",
                      temp_dir=work / "temp")
    warm = json.loads(json.dumps(nodes.create_registry().object_info(env), default=repr))
    assert cold["info"] == warm
    assert len(warm) > 200
    assert warm["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == ["a.safetensors",
                                                                                 "latentgraph-shapes.safetensors"]
    assert warm["KSampler"]["input"]["required"]["sampler_name"][0][:3] == ["euler", "euler_cfg_pp",
                                                                            "euler_ancestral"]


@pytest.mark.parametrize("ours, source, name, convert", importlib.import_module("latentgraph.nodes.choices").SOURCES)
def test_combo_choices_are_the_keys_of_their_tables(ours, source, name, convert):
    from latentgraph.nodes import choices

    assert getattr(choices, ours) == convert(getattr(importlib.import_module(source), name))


# -- graph/lazy.py -----------------------------------------------------------------------------
@pytest.fixture
def fake_module(tmp_path, monkeypatch):
    """A module that counts its imports, importable as ``lazyprobe``."""
    (tmp_path / "lazyprobe.py").write_text("import builtins\nbuiltins.LAZYPROBE_IMPORTS = "
                                           "getattr(builtins, 'LAZYPROBE_IMPORTS', 0) + 1\n"
                                           "class Thing:\n    size = 3\nLIMIT = 7\nNAMES = {'a': 1}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "lazyprobe", raising=False)
    import builtins

    monkeypatch.setattr(builtins, "LAZYPROBE_IMPORTS", 0, raising=False)
    yield builtins
    sys.modules.pop("lazyprobe", None)


def test_lazy_imports_on_first_use_and_rebinds_the_name(fake_module):
    scope = {"__package__": None}
    exec("from latentgraph.graph.lazy import lazy\nThing = lazy('lazyprobe', 'Thing')\n"
         "mod = lazy('lazyprobe')", scope)
    assert fake_module.LAZYPROBE_IMPORTS == 0 and "lazyprobe" not in sys.modules
    assert repr(scope["Thing"]) == "<lazy lazyprobe.Thing>"
    proxy = scope["Thing"]
    assert proxy.size == 3  # first use imports ...
    assert fake_module.LAZYPROBE_IMPORTS == 1
    assert scope["Thing"] is sys.modules["lazyprobe"].Thing  # ... and rebinds the module's name
    assert type(scope["mod"]) is Lazy and scope["mod"].LIMIT == 7
    assert scope["mod"] is sys.modules["lazyprobe"] and fake_module.LAZYPROBE_IMPORTS == 1


def test_lazy_proxies_work_as_classes_callables_and_tables(fake_module):
    Thing = lazy("lazyprobe", "Thing")
    assert not is_resolved(Thing)
    obj = Thing()  # a call
    assert isinstance(obj, Thing) and issubclass(type(obj), Thing)

    class Sub(lazy("lazyprobe", "Thing")):  # a base class
        pass

    assert Sub.size == 3 and Sub.__mro__[1] is sys.modules["lazyprobe"].Thing
    names = lazy("lazyprobe", "NAMES")
    assert names["a"] == 1 and "a" in names and list(names) == ["a"] and len(names) == 1
    assert unwrap(names) is sys.modules["lazyprobe"].NAMES and unwrap(5) == 5


def test_lazy_annotations_and_dunder_probes_do_not_import(fake_module):
    import typing

    Thing = lazy("lazyprobe", "Thing")
    hint = typing.Annotated[Thing | None, "spec"]
    assert typing.get_origin(hint) is typing.Annotated
    assert not hasattr(Thing, "__typing_subst__") and not hasattr(Thing, "__wrapped__")
    assert "lazyprobe" not in sys.modules and fake_module.LAZYPROBE_IMPORTS == 0


def test_lazy_proxies_copy_and_pickle_as_the_real_object(fake_module):
    import copy
    import pickle

    table = {"cls": lazy("lazyprobe", "Thing"), "names": lazy("lazyprobe", "NAMES")}
    assert "lazyprobe" not in sys.modules
    copied = copy.deepcopy(table)
    real = sys.modules["lazyprobe"]
    assert copied["cls"] is real.Thing and copied["names"] == {"a": 1} and copied["names"] is not real.NAMES
    assert pickle.loads(pickle.dumps(lazy("lazyprobe", "Thing"))) is real.Thing
    assert copy.copy(lazy("lazyprobe")) is real


def test_re_exported_constants_are_real_values():
    from latentgraph.models.upscale import TILE as REAL
    from latentgraph.nodes.upscale import TILE

    assert type(TILE) is int and TILE == REAL


def test_lazy_missing_names_fail_loudly_on_use(fake_module):
    missing = lazy("lazyprobe", "Nope")
    with pytest.raises(ImportError, match="cannot import name 'Nope' from 'lazyprobe' \\(a lazy import\\)"):
        missing()
    with pytest.raises(ModuleNotFoundError, match="no_such_module_xyz"):
        lazy("no_such_module_xyz").attr


def test_a_node_module_with_lazy_imports_registers_without_importing(fake_module, tmp_path):
    (tmp_path / "lazynodes.py").write_text(textwrap.dedent("""
        from __future__ import annotations
        from typing import Annotated
        from latentgraph.graph import IMAGE, Int, node
        from latentgraph.graph.lazy import lazy
        Thing = lazy("lazyprobe", "Thing")

        @node(outputs=[IMAGE])
        def MakeThing(image: Annotated[Thing | None, IMAGE], n: Annotated[int, Int(2, min=1)] = 2) -> Thing:
            return Thing()
    """))
    sys.modules.pop("lazynodes", None)
    module = importlib.import_module("lazynodes")
    registry = NodeRegistry()
    (ndef,) = registry.register_module(module)
    assert ndef.object_info()["input"]["required"] == {"image": ["IMAGE"], "n": ["INT", {"default": 2, "min": 1}]}
    assert "lazyprobe" not in sys.modules
    assert type(ndef.fn(image=None)).__name__ == "Thing" and fake_module.LAZYPROBE_IMPORTS == 1
    sys.modules.pop("lazynodes", None)


# -- the CLIP BPE and text transformer without transformers ----------------------------------
def test_text_encoders_build_on_meta_without_transformers():
    code = ("import sys, torch\nfrom latentgraph.models.families import tiny_architecture\n"
            "from latentgraph.models.checkpoint import build_text_encoders\n"
            "from latentgraph.models.tokenizer import ClipBPE\n"
            "with torch.device('meta'):\n    enc = build_text_encoders(tiny_architecture('sdxl'))\n"
            "ids = ClipBPE().encode('a photo of a cat')\n"
            "print(sorted(enc), ids, 'transformers' in sys.modules, 'torch._dynamo' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["['g',", "'l']", "[320,", "1125,", "539,", "320,", "2368]",
                                   "False", "False"]


@pytest.fixture(scope="module")
def hf_tokenizer():
    transformers = pytest.importorskip("transformers")
    from latentgraph.models.tokenizer import VOCAB_DIR

    vocab = json.loads((Path(VOCAB_DIR) / "vocab.json").read_text(encoding="utf-8"))
    lines = (Path(VOCAB_DIR) / "merges.txt").read_text(encoding="utf-8").split("\n")
    return transformers.CLIPTokenizer(vocab=vocab, merges=[tuple(x.split(" ")) for x in lines[1:] if x])


TRICKY = ["a red circle on a blue background", "", "   ", "<|endoftext|>", "a<|startoftext|>b <|endoftext|>x",
          "<|ENDOFTEXT|>", "Ünïcödé ÅNGSTRÖM ß ﬁ", "emoji 😀👍🏽 漢字 かな", "it's they're we've I'm you'll he'd don'T",
          "1234567 3.14 -2e5", "tabs\tand\nnewlines\r\n", "(masterpiece:1.2), [bad], {x}", "embedding:foo",
          "a" * 300, "\u00a0nbsp\u2003em e\u0301"]


def test_bpe_matches_transformers_clip_tokenizer(hf_tokenizer):
    from latentgraph.models.tokenizer import ClipBPE

    bpe = ClipBPE()
    for text in TRICKY:
        assert bpe.encode(text) == hf_tokenizer(text, add_special_tokens=False)["input_ids"], text
    for token in (0, 1, 320, 2368, 49406, 49407):
        assert bpe.token_string(token) == hf_tokenizer.convert_ids_to_tokens(token)


_BPE = importlib.import_module("latentgraph.models.tokenizer").ClipBPE()


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("abcXYZ 019'.,;:!?()[]{}<>|_-\t\néüß漢😀\u0301\u00a0")), max_size=40))
def test_bpe_matches_transformers_on_any_text(hf_tokenizer, text):
    assert _BPE.encode(text) == hf_tokenizer(text, add_special_tokens=False)["input_ids"]


def _transformers_layers_forward(enc, hf, ids, layer_idx):
    """The forward pass the text encoder ran before, through transformers' own layers."""
    from latentgraph.models.text_encoders import EOS

    x = hf.embeddings.token_embedding(ids) + hf.embeddings.position_embedding.weight[:ids.shape[1]]
    causal = torch.full((ids.shape[1],) * 2, float("-inf"), dtype=x.dtype).triu_(1)[None, None]
    stop = len(hf.encoder.layers) + 1 + layer_idx
    hidden = x
    for i, layer in enumerate(hf.encoder.layers):
        x = layer(x, causal)
        if i + 1 == stop:
            hidden = x
    last = hf.final_layer_norm(x)
    if enc.role.final_norm:
        hidden = last if stop == len(hf.encoder.layers) else hf.final_layer_norm(hidden)
    pooled = last[torch.arange(ids.shape[0]), (ids == EOS).int().argmax(dim=-1)]
    if enc.role.project_pooled and enc.text_projection is not None:
        pooled = enc.text_projection(pooled)
    return hidden, pooled


@pytest.mark.parametrize("act, role, proj", [("quick_gelu", "sd1", None), ("gelu", "sdxl_g", 32), ("gelu", "sd2", 64)])
def test_text_transformer_is_bit_identical_to_transformers_layers(act, role, proj):
    transformers = pytest.importorskip("transformers")
    from latentgraph.models.text_encoders import ClipTextEncoder, EncoderRole, TextEncoderConfig

    cfg = TextEncoderConfig(64, 96, 3, 4, 49408, 77, act, proj)
    torch.manual_seed(5)
    enc = ClipTextEncoder(cfg, getattr(EncoderRole, role)())
    after_ours = torch.rand(4)
    torch.manual_seed(5)
    hf = transformers.CLIPTextModel(cfg.hf_config())
    tail = torch.nn.Linear(64, proj, bias=False) if proj else None
    assert torch.equal(torch.rand(4), after_ours)  # the same draws as before: made files unchanged
    theirs = hf.state_dict()
    ours = enc.transformer.state_dict()
    assert list(ours) == list(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
    if proj:
        assert torch.equal(enc.text_projection.weight, tail.weight)
    assert all(p.requires_grad for p in enc.parameters())
    ids = torch.randint(1, 49406, (3, 77))
    ids[:, 0], ids[0, 9:], ids[1:, 40:] = 49406, 49407, 49407  # BOS, the prompt, EOS padding
    for dtype in (torch.float32, torch.bfloat16):
        enc, hf = enc.to(dtype), hf.to(dtype)
        for layer in (-1, -2, -3):
            with torch.no_grad():
                got = enc(ids, None, layer)
                want = _transformers_layers_forward(enc, hf, ids, layer)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (dtype, layer)
