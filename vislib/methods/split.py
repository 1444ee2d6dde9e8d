"""The network cut after one layer: the layers before it run once, the rest as often as a method needs.

L2-CAF multiplies a layer's output by a filter hundreds of times per image and Ablation-CAM zeroes each of its
channels in turn; both change one layer's output of a fixed input, so the layers before it need to run only once.
Where `torch.fx` can trace the model, `cut_after` cuts the graph after the layer into a tail module that takes the
changed output plus the cached values that cross the cut (a residual branch, `x.size(0)` of the input), and recomputes
cheap values that are not per-image; where nothing but constants crosses, the model's own forward pass (a hook keeps
the layer's output) replaces the fx interpreter's slower one. Where tracing fails, a forward hook changes the layer's
output and the whole net runs every call. Both tails give the same logits (tested on ResNet, EfficientNet, GoogLeNet,
DenseNet, AlexNet, the demo net and vision transformers).
"""

from __future__ import annotations

import contextlib
import logging
import operator
from collections.abc import Callable, Iterator

import torch
import torch.fx as fx
from torch import nn

from vislib.errors import LayerError
from vislib.methods.base import fast_layout
from vislib.methods.hooks import LayerCapture, in_place_off
from vislib.models.layout import Layout, layer_layout
from vislib.models.registry import resolve_layer

log = logging.getLogger(__name__)


class GraphTail:
    """The fx-traced remainder of the net, fed the cached layer output (changed) and the values crossing the cut."""

    path = "fx"

    def __init__(self, module: fx.GraphModule, output: torch.Tensor, layout: Layout,
                 crossing: list[torch.Tensor]) -> None:
        self.module, self.layout = module, layout
        self._output_all, self.crossing_all = output, crossing
        self._output, self._crossing = output, crossing

    def select(self, rows: torch.Tensor) -> None:
        """Restrict later calls to batch rows `rows` (repeats allowed)."""
        self._output = self._output_all[rows]
        self._crossing = [value[rows] for value in self.crossing_all]

    def __call__(self, masks: torch.Tensor) -> torch.Tensor:
        """Logits [n,K] with the layer output's grid multiplied by `masks` [n,1,h,w]."""
        return self.module(self.layout.masked(self._output, masks), *self._crossing)

    def replaced(self, spatial: torch.Tensor) -> torch.Tensor:
        """Logits [n,K] with the layer output's grid replaced by `spatial` [n,C,h,w] (prefix tokens kept)."""
        return self.module(self.layout.from_spatial(spatial.to(self._output.dtype), self._output), *self._crossing)

    def attached(self) -> contextlib.AbstractContextManager:
        """Context in which calls work (and after which nothing is left on the model)."""
        return contextlib.nullcontext(self)


class HookTail:
    """The whole net with a forward hook that changes the layer's output: the same calls as `GraphTail`."""

    path = "hook"

    def __init__(self, model: nn.Module, layer: str, images: torch.Tensor, layout: Layout) -> None:
        self.model, self.layer, self.layout = model, layer, layout
        self._images_all = self._images = images
        self._change: Callable[[torch.Tensor], torch.Tensor] | None = None

    def select(self, rows: torch.Tensor) -> None:
        self._images = self._images_all[rows]

    def hook(self, _module: nn.Module, _inputs, output: torch.Tensor) -> torch.Tensor:
        """Forward hook: the changed layer output, in the layer's own layout (prefix tokens untouched)."""
        assert self._change is not None  # every call sets it before the forward pass that runs this hook
        return self._change(output)

    def __call__(self, masks: torch.Tensor) -> torch.Tensor:
        self._change = lambda output: self.layout.masked(output, masks)
        return self.model(self._images)

    def replaced(self, spatial: torch.Tensor) -> torch.Tensor:
        self._change = lambda output: self.layout.from_spatial(spatial.to(output.dtype), output)
        return self.model(self._images)

    @contextlib.contextmanager
    def attached(self) -> Iterator[HookTail]:
        handle = resolve_layer(self.model, self.layer).register_forward_hook(self.hook)
        try:
            yield self
        finally:
            handle.remove()


class _LeafTracer(fx.Tracer):
    """An fx tracer that keeps the filtered layer as one call, so the graph can be cut there."""

    def __init__(self, layer: str) -> None:
        super().__init__()
        self.layer = layer

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name == self.layer or super().is_leaf_module(m, module_qualified_name)


class _Recorder(fx.Interpreter):
    """Runs a traced graph once, noting which values are per-image tensors and keeping those a tail may need.

    A tail needs the per-image tensors it reads from before the cut, and those read by values that
    are not per-image (such as `x.size(0)`), which the tail recomputes because they change when
    rows are selected. Inputs are still alive while a node runs, so they are kept then.
    """

    def __init__(self, module: fx.GraphModule, cut: fx.Node, downstream: set[fx.Node], batch: int) -> None:
        super().__init__(module)
        self.cut, self.downstream, self.batch = cut, downstream, batch
        self.per_image: dict[fx.Node, bool] = {}
        self.values: dict[fx.Node, object] = {}

    def run_node(self, n: fx.Node):
        value = super().run_node(n)
        self.per_image[n] = isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == self.batch
        if n is self.cut:
            self.values[n] = value
        elif n in self.downstream or (not self.per_image[n] and n.op != "get_attr"):
            for inp in n.all_input_nodes:
                if inp not in self.downstream and self.per_image[inp]:
                    self.values[inp] = self.env[inp]
        return value


def _spatial(model: nn.Module, output: object, layer: str, method: str) -> tuple[Layout, torch.Tensor]:
    """The layout of the layer's output and its grid as [N,C,h,w]; LayerError where it holds none."""
    capture = LayerCapture()
    layout = None
    if isinstance(output, torch.Tensor):
        layout = layer_layout(model, layer, output)
        capture.activation = layout.to_spatial(output) if layout is not None else output
    spatial = capture.spatial(layer, method)
    assert layout is not None  # a tensor of no layout is not 4-D, which `spatial` refuses
    return layout, spatial


def _called_once(layer: str, calls: int, method: str) -> None:
    if calls == 0:
        raise LayerError(f"layer {layer!r} was not reached in the forward pass; pick a layer the model uses")
    if calls > 1:
        raise LayerError(
            f"layer {layer!r} runs more than once ({calls} times) in one forward pass, so method {method!r} has "
            "no single output to change; pick a layer used once (e.g. the enclosing block)"
        )


_IN_PLACE_FUNCTIONS = {operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul,
                       operator.itruediv: operator.truediv, torch.relu_: torch.relu}


def _out_of_place(graph: fx.Graph) -> None:
    """Rewrite in-place ops as out-of-place ones.

    The caching pass must not overwrite the layer's output or a value crossing the cut after
    recording it, and every iteration reuses those cached tensors.
    """
    for node in graph.nodes:
        if node.kwargs.get("inplace") is True:
            node.kwargs = {**node.kwargs, "inplace": False}
        if node.op == "call_function" and node.target in _IN_PLACE_FUNCTIONS:
            node.target = _IN_PLACE_FUNCTIONS[node.target]
        elif (node.op == "call_method" and node.target.endswith("_") and not node.target.startswith("_")
              and hasattr(torch.Tensor, node.target[:-1])):
            node.target = node.target[:-1]


def graph_split(model: nn.Module, layer: str, images: torch.Tensor,
                 method: str) -> tuple[GraphTail, torch.Tensor, torch.Tensor] | str:
    """Cut the traced model after `layer`: (tail, activation, logits), or why it cannot be cut."""
    tracer = _LeafTracer(layer)
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # fx raises many types for Python control flow it cannot trace
        return f"torch.fx cannot trace the model ({type(exc).__name__}: {exc})"
    _out_of_place(graph)
    cuts = [n for n in graph.nodes if n.op == "call_module" and n.target == layer]
    if not cuts:
        return f"layer {layer!r} is not a call in the traced graph (it sits inside a module fx keeps whole)"
    _called_once(layer, len(cuts), method)
    cut = cuts[0]
    downstream = {cut}
    for node in graph.nodes:
        if any(inp in downstream for inp in node.all_input_nodes):
            downstream.add(node)
    output = next(n for n in graph.nodes if n.op == "output")
    if output not in downstream:
        raise LayerError(f"the output of model does not depend on layer {layer!r}; pick a layer on its path")
    reads = {inp for node in downstream if node is not cut for inp in node.all_input_nodes} - downstream
    values: dict[fx.Node, object] = {}
    per_image: dict[fx.Node, bool] = {}
    if all(node.op == "get_attr" for node in reads):
        # The tail reads nothing from before the cut but constants, so the model's own forward gives all it needs,
        # without the interpreter's per-node overhead.
        output, logits = _captured_forward(model, layer, images, method)
    else:
        recorder = _Recorder(fx.GraphModule(tracer.root, graph), cut, downstream, images.shape[0])
        # The recorder keeps references: an in-place module would change a value the tail reads after the recorder
        # took it (the tail would see the changed value where the net read it unchanged). A value changed in place
        # is a separate node out of place.
        with torch.no_grad(), in_place_off(model):
            logits = recorder.run(images)
        output, values, per_image = recorder.values[cut], recorder.values, recorder.per_image
    layout, activation = _spatial(model, output, layer, method)

    crossing: list[fx.Node] = []
    constants: list[fx.Node] = []
    recomputed: set[fx.Node] = set()

    def feed(node: fx.Node) -> str | None:
        """Classify a value from before the cut that the tail reads; say why it cannot, if so."""
        if node in downstream or node in recomputed or node in crossing or node in constants:
            return None
        if node.op == "get_attr":
            constants.append(node)
        elif per_image[node]:
            crossing.append(node)
        elif node.op == "placeholder":
            if not node.args:
                return f"model input {node.name!r} is not a per-image tensor"
            # An input the call leaves at its default (timm's `attn_mask=None`) keeps that default in the tail.
            constants.append(node)
        else:
            recomputed.add(node)
            for inp in node.all_input_nodes:
                reason = feed(inp)
                if reason:
                    return reason
        return None

    for node in graph.nodes:
        if node in downstream and node is not cut:
            for inp in node.all_input_nodes:
                reason = feed(inp)
                if reason:
                    return reason
    crossing_values: list[torch.Tensor] = []
    for n in crossing:
        value = values[n]
        assert isinstance(value, torch.Tensor)  # crossing values are per-image, which only tensors are
        crossing_values.append(value)
    tail_nodes = [n for n in graph.nodes if (n in downstream and n is not cut) or n in recomputed]

    tail = fx.Graph()
    env = {cut: tail.placeholder("filtered")}
    env.update({node: tail.placeholder(f"crossing_{i}") for i, node in enumerate(crossing)})
    env.update({node: tail.node_copy(node) for node in constants})
    for node in tail_nodes:
        env[node] = tail.node_copy(node, lambda n: env[n])
    tail_module = fx.GraphModule(tracer.root, tail)
    assert isinstance(output, torch.Tensor)  # `_spatial` accepted it
    return GraphTail(tail_module, output, layout, crossing_values), activation, logits


def cut_after(model: nn.Module, layer: str, images: torch.Tensor,
              method: str) -> tuple[GraphTail | HookTail, torch.Tensor, torch.Tensor]:
    """The net after `layer` as a tail, the layer's activation [N,C,h,w] and the unchanged logits [N,K].

    Call it inside `frozen_model`; the tail's calls are valid inside `tail.attached()`.
    """
    resolve_layer(model, layer)
    images = fast_layout(images)
    split = graph_split(model, layer, images, method)
    if not isinstance(split, str):
        log.info("%s: fx tail at layer %r (the net before it runs once)", method, layer)
        return split
    log.info("%s: hook path at layer %r (whole net every call): %s", method, layer, split)
    output, logits = _captured_forward(model, layer, images, method)
    layout, activation = _spatial(model, output, layer, method)
    return HookTail(model, layer, images, layout), activation, logits


def _captured_forward(model: nn.Module, layer: str, images: torch.Tensor, method: str) -> tuple[object, torch.Tensor]:
    """The output of `layer` and the logits, from one forward pass without autograd.

    The network after the layer gets a copy of a tensor output, so an in-place op there (densenet's
    `F.relu(features, inplace=True)`) leaves the captured output alone.
    """
    captured: list[object] = []

    def hook(_module: nn.Module, _inputs: tuple, output: object) -> object:
        captured.append(output)
        return output.clone() if isinstance(output, torch.Tensor) else None

    handle = resolve_layer(model, layer).register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = model(images)
    finally:
        handle.remove()
    _called_once(layer, len(captured), method)
    return captured[0], logits
