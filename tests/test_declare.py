"""Node declarations: the signature is the schema; mismatches fail loudly at registration;
/object_info has ComfyUI's shape."""

from __future__ import annotations

from typing import Annotated, Any

import pytest

from latentgraph.graph import (CLIP, IMAGE, LATENT, MASK, MODEL, Boolean, Combo, DeclarationError, Float, Hidden, Int,
                               NodeContext, NodeRegistry, Output, Result, Socket, String, node)
from latentgraph.nodes import create_registry


@node(category="sampling", display_name="Toy Sampler", outputs=[LATENT], version=3)
def ToySampler(
    model: Annotated[Any, MODEL],
    seed: Annotated[int, Int(0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True)],
    steps: Annotated[int, Int(20, min=1, max=10000)],
    cfg: Annotated[float, Float(8.0, min=0.0, max=100.0, step=0.1, round=0.01)],
    sampler_name: Annotated[str, Combo(["euler", "heun"])],
    positive: Annotated[list, Socket("CONDITIONING")],
    denoise: Annotated[float, Float(min=0.0, max=1.0, step=0.01)] = 1.0,
    mask: Annotated[Any, MASK(optional=True)] = None,
) -> dict:
    """Denoises a latent.

    The second paragraph is not part of the description."""
    return {}


def test_object_info_shape():
    reg = NodeRegistry()
    reg.register(ToySampler, python_module="nodes")
    info = reg.object_info()["ToySampler"]
    assert info["input"]["required"]["model"] == ["MODEL"]
    assert info["input"]["required"]["seed"] == ["INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                                                         "control_after_generate": True}]
    assert info["input"]["required"]["cfg"] == ["FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1,
                                                          "round": 0.01}]
    assert info["input"]["required"]["sampler_name"] == [["euler", "heun"], {}]
    assert info["input"]["required"]["denoise"] == ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}]
    assert info["input"]["optional"] == {"mask": ["MASK"]}
    assert info["input_order"] == {"required": ["model", "seed", "steps", "cfg", "sampler_name", "positive", "denoise"],
                                   "optional": ["mask"]}
    assert info["output"] == ["LATENT"] and info["output_name"] == ["LATENT"] and info["output_is_list"] == [False]
    assert info["name"] == "ToySampler" and info["display_name"] == "Toy Sampler"
    assert info["description"] == "Denoises a latent."
    assert info["category"] == "sampling" and info["output_node"] is False and info["python_module"] == "nodes"
    ndef = reg["ToySampler"]
    assert ndef.version == 3 and ndef.cacheable is True


def test_outputs_from_the_return_annotation_and_names():
    @node(category="x")
    def Split(image: Annotated[Any, IMAGE]) -> tuple[Annotated[Any, Output("IMAGE", "rgb")],
                                                     Annotated[Any, Output("MASK", "alpha", is_list=True)]]:
        return image, [image]

    reg = NodeRegistry()
    ndef = reg.register(Split)
    assert ndef.output_types == ("IMAGE", "MASK") and ndef.output_names == ("rgb", "alpha")
    info = reg.object_info()["Split"]
    assert info["output_is_list"] == [False, True] and info["output_name"] == ["rgb", "alpha"]
    assert ndef.output_index("alpha") == 1 and ndef.output_index("MASK") == 1 and ndef.output_index(0) == 0
    assert ndef.output_index("nope") is None and ndef.output_index(2) is None


def test_hidden_and_context_parameters_are_not_inputs():
    @node(output_node=True)
    def Saver(images: Annotated[Any, IMAGE], prompt: Annotated[dict, Hidden("PROMPT")], ctx: NodeContext) -> Result:
        return Result(ui={})

    ndef = NodeRegistry().register(Saver)
    assert list(ndef.inputs) == ["images"] and ndef.context_param == "ctx"
    assert ndef.object_info()["input"]["hidden"] == {"prompt": "PROMPT"}
    assert ndef.object_info()["input_order"]["hidden"] == ["prompt"]


def bad(fn_factory):
    with pytest.raises(DeclarationError) as info:
        NodeRegistry().register(fn_factory())
    return str(info.value)


def test_mismatches_fail_loudly():
    def missing_spec():
        @node(outputs=["INT"])
        def N(a: int) -> int:
            return a
        return N

    assert "parameter 'a' needs exactly one input spec" in bad(missing_spec)

    def default_mismatch():
        @node(outputs=["INT"])
        def N(a: Annotated[int, Int(3)] = 4) -> int:
            return a
        return N

    assert "spec default 3 differs from the Python default 4" in bad(default_mismatch)

    def wrong_python_type():
        @node(outputs=["INT"])
        def N(a: Annotated[str, Int(3)]) -> int:
            return 1
        return N

    assert "declared INT but annotated str" in bad(wrong_python_type)

    def optional_without_default():
        @node(outputs=["INT"])
        def N(m: Annotated[Any, MASK(optional=True)]) -> int:
            return 1
        return N

    assert "optional input 'm' needs a Python default" in bad(optional_without_default)

    def default_out_of_range():
        @node(outputs=["INT"])
        def N(a: Annotated[int, Int(50, max=10)]) -> int:
            return a
        return N

    assert "default 50 is invalid: Value 50 bigger than max of 10" in bad(default_out_of_range)

    def default_not_a_choice():
        @node(outputs=["INT"])
        def N(a: Annotated[str, Combo(["x", "y"], default="z")]) -> int:
            return 1
        return N

    assert "default 'z' is invalid" in bad(default_not_a_choice)

    def outputs_disagree():
        @node(outputs=["INT", "FLOAT"])
        def N(a: Annotated[int, Int(1)]) -> tuple[Annotated[int, Output("INT")], Annotated[str, Output("STRING")]]:
            return a, ""
        return N

    assert "outputs= declares ['INT', 'FLOAT'] but the return annotation says ['INT', 'STRING']" in bad(outputs_disagree)

    def undeclared_outputs():
        @node()
        def N(a: Annotated[int, Int(1)]) -> int:
            return a
        return N

    assert "outputs are not declared" in bad(undeclared_outputs)

    def sink_without_flag():
        @node(outputs=[])
        def N(a: Annotated[int, Int(1)]) -> None:
            return None
        return N

    assert "must be an output node" in bad(sink_without_flag)

    def varargs():
        @node(outputs=["INT"])
        def N(**kwargs) -> int:
            return 1
        return N

    assert "*args/**kwargs" in bad(varargs)

    def hook_names_unknown_input():
        @node(outputs=["INT"], fingerprint=lambda path, env: 1)
        def N(a: Annotated[int, Int(1)]) -> int:
            return a
        return N

    assert "fingerprint hook names inputs the node does not have: ['path']" in bad(hook_names_unknown_input)

    def socket_with_default():
        @node(outputs=["INT"])
        def N(m: Annotated[Any, CLIP(default=1)]) -> int:
            return 1
        return N

    assert "socket input 'm' (CLIP) cannot have a default" in bad(socket_with_default)


def test_every_problem_of_a_declaration_is_listed_together():
    def two_problems():
        @node(outputs=["INT"])
        def N(a: int, b: Annotated[int, Int(5)] = 6) -> int:
            return 1
        return N

    text = bad(two_problems)
    assert text.count("\n  - ") == 2


def test_undecorated_and_duplicate_names():
    def plain(a):
        return a

    with pytest.raises(DeclarationError, match="not declared as a node"):
        NodeRegistry().register(plain)
    reg = NodeRegistry()
    reg.register(ToySampler)
    with pytest.raises(DeclarationError, match="already registered"):
        reg.register(ToySampler)


def test_builtin_registry_renders_and_names_are_stable():
    reg = create_registry()
    info = reg.object_info()
    for name in ("EmptyImage", "LoadImage", "SaveImage", "PreviewImage", "ImageInvert", "ImageBlend",
                 "ImageBlur", "ImageScale", "ImageCompositeMasked", "SolidMask", "InvertMask", "MaskToImage",
                 "ImageToMask", "FeatherMask", "PrimitiveInt", "PrimitiveFloat", "PrimitiveString",
                 "PrimitiveStringMultiline", "PrimitiveBoolean"):
        assert name in info, name
        entry = info[name]
        assert set(entry) >= {"input", "input_order", "output", "output_is_list", "output_name", "name",
                              "display_name", "description", "category", "output_node", "python_module"}
        assert entry["description"], name
    assert info["SaveImage"]["output_node"] is True
    assert info["EmptyImage"]["input"]["required"]["color"][1]["display"] == "color"
    assert info["LoadImage"]["output"] == ["IMAGE", "MASK"]


def test_widget_types_render_their_options():
    @node(outputs=["STRING"])
    def W(text: Annotated[str, String("hi", multiline=True, placeholder="type")],
          flag: Annotated[bool, Boolean(True, label_on="yes", label_off="no")]) -> str:
        return text

    info = NodeRegistry().register(W).object_info()["input"]["required"]
    assert info["text"] == ["STRING", {"default": "hi", "multiline": True, "placeholder": "type"}]
    assert info["flag"] == ["BOOLEAN", {"default": True, "label_on": "yes", "label_off": "no"}]
