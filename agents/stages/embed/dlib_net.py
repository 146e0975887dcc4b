"""dlib's face-recognition ResNet run by PyTorch, its weights read from dlib's own file.

dlib-bin's wheel is built without BLAS: its CPU convolutions cost ~110 ms of one core per
descriptor here, four times an InceptionResnetV1 crop. The same network in PyTorch (oneDNN,
every core) gives the same descriptors to float tolerance (max |difference| ~1e-6 on
London chips, ``tests/unit/agents/stages/test_embed_dlib.py``) in a fraction of the time
(BENCHMARKS.md, ingestion). dlib still finds the 5 points and cuts the aligned chip.

The file is dlib's ``serialize`` of ``anet_type`` from dlib's ``dnn_face_recognition_ex``:
a 150 px RGB input (channel means subtracted, divided by 256), a 7x7/2 convolution and a
3x3/2 max pool, then 14 residual blocks (3 of 32 channels, 4 of 64, 3 of 128, 4 of 256;
the first of each width halves the side, its shortcut a 2x2 average pool added as dlib adds
tensors of unequal sizes, :func:`_add`), a global average pool and a 128-wide linear layer
without bias. Batch norms were frozen into per-channel ``affine`` layers, which are folded
into the convolutions here.
:func:`read_dlib_resnet` reads every layer in file order and refuses any other layout.

Example::

    net = DlibResnet(read_dlib_resnet(descriptor_file))
    net.describe(chips)         # (N, 128) float32, dlib's raw (not unit-length) descriptors
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

__all__ = ["DlibResnet", "ResnetWeights", "read_dlib_resnet"]

Floats = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Conv:
    """A convolution with its frozen batch norm folded in."""

    weight: Floats
    """out x in x kh x kw"""
    bias: Floats
    stride: int
    padding: int


@dataclass(frozen=True, slots=True)
class Block:
    first: Conv
    second: Conv
    down: bool
    """the block halves the side; its shortcut is a 2x2 average pool"""


@dataclass(frozen=True, slots=True)
class ResnetWeights:
    means: tuple[float, float, float]
    """per-channel RGB means the input layer subtracts"""
    side: int
    stem: Conv
    blocks: tuple[Block, ...]
    fc: Floats
    """inputs x outputs (256 x 128)"""


class _Reader:
    """dlib's ``serialize`` format: integers as a length byte (high bit: negative) and that
    many little-endian bytes; floats as an integer mantissa and exponent; bools as '0'/'1';
    tensors as version 2, four dims and little-endian float32 data."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data = data
        self.at = 0
        self.path = path

    def fail(self, what: str) -> ValueError:
        return ValueError(
            f"{self.path} is not dlib's face recognition ResNet: {what} at byte {self.at}"
        )

    def integer(self) -> int:
        head = self._take(1)[0]
        size = head & 0x0F
        value = int.from_bytes(self._take(size), "little")
        return -value if head & 0x80 else value

    def real(self) -> float:
        mantissa = self.integer()
        return float(mantissa * 2.0 ** self.integer())

    def flag(self) -> bool:
        value = self._take(1)
        if value not in (b"0", b"1"):
            raise self.fail(f"a bool that is {value!r}")
        return value == b"1"

    def text(self) -> str:
        return self._take(self.integer()).decode("ascii", errors="replace")

    def expect(self, version: int) -> None:
        found = self.integer()
        if found != version:
            raise self.fail(f"version {found} where {version} was expected")

    def tensor(self) -> Floats:
        self.expect(2)
        shape = tuple(self.integer() for _ in range(4))
        count = int(np.prod(shape))
        data = np.frombuffer(self._take(4 * count), dtype="<f4").astype(np.float32)
        return data.reshape(shape)

    def alias(self) -> tuple[int, ...]:
        self.expect(1)
        return tuple(self.integer() for _ in range(4))

    def _take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise self.fail("the file ends early")
        chunk = self.data[self.at : self.at + n]
        self.at += n
        return chunk


def read_dlib_resnet(path: Path) -> ResnetWeights:
    """Every layer of dlib's face recognition model file, checked against its layout.

    Raises ``ValueError`` naming the file and the byte where it departs from the layout.
    """
    reader = _Reader(Path(path).read_bytes(), Path(path))
    reader.expect(1)  # add_loss_layer
    if reader.text() != "loss_metric_2":
        raise reader.fail("no metric loss layer")
    reader.real(), reader.real()  # the training margin and distance threshold
    while reader.data[reader.at : reader.at + 2] in (b"\x01\x01", b"\x01\x02"):
        reader.integer()  # the versions of the nested layers, outermost first
    reader.expect(3)  # the layer over the input
    if reader.text() != "input_rgb_image_sized":
        raise reader.fail("no RGB input layer")
    means = (reader.real(), reader.real(), reader.real())
    side, side_x = reader.integer(), reader.integer()
    if side != side_x:
        raise reader.fail(f"a {side} x {side_x} input")
    layers: list[_Layer] = []
    while reader.at < len(reader.data):
        layers.append(_layer(reader))
        reader.flag(), reader.flag(), reader.flag()  # training state flags
        for _ in range(3):
            if reader.tensor().size:  # outputs and gradients; empty in a saved model
                raise reader.fail("a layer that kept its training state")
        if len(layers) == 1:
            reader.integer()  # the input layer's sample expansion factor
    return _assemble(layers, means, side, reader)


@dataclass(frozen=True, slots=True)
class _Layer:
    """One layer as the file holds it: its name, and what of it the forward pass needs."""

    name: str
    weight: Floats | None = None
    """convolution filters, or the linear layer's inputs x outputs matrix"""
    bias: Floats | None = None
    """convolution bias, or an affine layer's shift"""
    scale: Floats | None = None
    """an affine layer's per-channel scale"""
    stride: int = 1
    padding: int = 0
    pool: tuple[int, ...] = ()
    """a pool's rows, cols, strides and paddings"""


def _layer(reader: _Reader) -> _Layer:
    name = reader.text()
    if name == "con_4":
        params = reader.tensor().reshape(-1)
        filters, rows, cols, stride_y, stride_x, pad_y, pad_x = (reader.integer() for _ in range(7))
        shape = reader.alias()
        reader.alias()  # the biases
        for _ in range(4):
            reader.real()  # learning-rate and weight-decay multipliers
        if (stride_y, pad_y) != (stride_x, pad_x) or rows != cols:
            raise reader.fail("a convolution that is not square")
        size = int(np.prod(shape))
        weight, bias = params[:size].reshape(shape), params[size : size + filters]
        return _Layer(name, weight=weight, bias=bias, stride=stride_y, padding=pad_y)
    if name == "affine_":
        params = reader.tensor().reshape(-1)
        reader.alias(), reader.alias()  # gamma, beta: the two halves of params
        if reader.integer() != 0:
            raise reader.fail("an affine layer not in convolution mode")
        half = params.size // 2
        return _Layer(name, scale=params[:half], bias=params[half:])
    if name in ("max_pool_2", "avg_pool_2"):
        return _Layer(name, pool=tuple(reader.integer() for _ in range(6)))
    if name in ("relu_", "add_prev_"):
        return _Layer(name)
    if name == "fc_2":
        outputs, inputs = reader.integer(), reader.integer()
        params = reader.tensor().reshape(-1)
        reader.alias(), reader.alias()
        if reader.integer() != 1:
            raise reader.fail("a linear layer with a bias")
        for _ in range(4):
            reader.real()
        return _Layer(name, weight=params[: inputs * outputs].reshape(inputs, outputs))
    raise reader.fail(f"an unknown layer {name!r}")


_STEM = ["con_4", "affine_", "relu_", "max_pool_2"]
_TAIL = ["avg_pool_2", "fc_2"]
_PLAIN = ["con_4", "affine_", "relu_", "con_4", "affine_", "add_prev_", "relu_"]
_DOWN = ["con_4", "affine_", "relu_", "con_4", "affine_", "avg_pool_2", "add_prev_", "relu_"]


def _assemble(
    layers: list[_Layer], means: tuple[float, float, float], side: int, reader: _Reader
) -> ResnetWeights:
    names = [layer.name for layer in layers]
    if names[:4] != _STEM or names[-2:] != _TAIL:
        raise reader.fail(f"layers {names[:4]} ... {names[-2:]}")
    if layers[3].pool != (3, 3, 2, 2, 0, 0) or layers[-2].pool[:2] != (0, 0):
        raise reader.fail("pools other than a 3x3/2 max pool and a global average")
    blocks = []
    body = layers[4:-2]
    at = 0
    while at < len(body):
        kinds = [layer.name for layer in body[at : at + len(_DOWN)]]
        down = kinds == _DOWN
        if not down and kinds[: len(_PLAIN)] != _PLAIN:
            raise reader.fail(f"a residual block laid out as {kinds}")
        if down and body[at + 5].pool != (2, 2, 2, 2, 0, 0):
            raise reader.fail("a shortcut pool other than 2x2/2")
        first, second = _fold(body[at], body[at + 1]), _fold(body[at + 3], body[at + 4])
        blocks.append(Block(first, second, down))
        at += len(_DOWN) if down else len(_PLAIN)
    fc = layers[-1].weight
    if fc is None:
        raise reader.fail("a linear layer without weights")
    return ResnetWeights(means, side, _fold(layers[0], layers[1]), tuple(blocks), fc)


def _fold(conv: _Layer, affine: _Layer) -> Conv:
    """``affine(conv(x))`` as one convolution: scale the filters, shift the bias."""
    weight, bias, scale, shift = conv.weight, conv.bias, affine.scale, affine.bias
    if weight is None or bias is None or scale is None or shift is None:
        raise ValueError(f"cannot fold {affine.name} into {conv.name}")
    return Conv(
        (weight * scale[:, None, None, None]).astype(np.float32),
        (bias * scale + shift).astype(np.float32),
        conv.stride,
        conv.padding,
    )


class DlibResnet(torch.nn.Module):
    """dlib's face recognition ResNet over 150 px aligned chips (from ``get_face_chip``)."""

    means: torch.Tensor
    fc: torch.Tensor

    def __init__(self, weights: ResnetWeights) -> None:
        super().__init__()
        self.side = weights.side
        self.register_buffer("means", torch.tensor(weights.means).view(1, 3, 1, 1))
        self.convs = torch.nn.ModuleList()
        self._plan: list[tuple[int, bool]] = []
        self.stem = self._conv(weights.stem)
        for block in weights.blocks:
            self._plan.append((len(self.convs), block.down))
            self.convs.append(self._conv(block.first))
            self.convs.append(self._conv(block.second))
        self.register_buffer("fc", torch.from_numpy(weights.fc.copy()))
        # channels_last weights let oneDNN pick its fastest convolution kernels on a CPU:
        # 10.6 against 20.6 ms a chip at batch 32 (2 cores, best of 4).
        self.eval().to(memory_format=torch.channels_last)

    @staticmethod
    def _conv(conv: Conv) -> torch.nn.Conv2d:
        out, into, k, _ = conv.weight.shape
        layer = torch.nn.Conv2d(into, out, k, stride=conv.stride, padding=conv.padding)
        layer.weight = torch.nn.Parameter(torch.from_numpy(conv.weight), requires_grad=False)
        layer.bias = torch.nn.Parameter(torch.from_numpy(conv.bias), requires_grad=False)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """N x 3 x side x side float RGB in 0..255 -> N x 128 descriptors."""
        x = (x - self.means) / 256.0
        x = F.max_pool2d(F.relu(self.stem(x)), 3, 2)
        for at, down in self._plan:
            y = self.convs[at + 1](F.relu(self.convs[at](x)))
            shortcut = F.avg_pool2d(x, 2, 2) if down else x
            x = F.relu(_add(y, shortcut))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1) @ self.fc

    def describe(self, chips: Sequence[npt.NDArray[np.uint8]]) -> Floats:
        """``(len(chips), 128)`` float32: dlib's descriptors of ``side`` px RGB chips."""
        if not chips:
            return np.empty((0, self.fc.shape[1]), dtype=np.float32)
        # The input stays NCHW: oneDNN converts it once at the stem; a channels_last copy of a
        # 3-channel batch made the whole pass about half as fast again (10.6 vs 19 ms a chip).
        batch = torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).float().contiguous()
        with torch.inference_mode():
            out = self(batch)
        return np.asarray(out.numpy(), dtype=np.float32)


def _add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a + b`` as dlib's ``add_prev`` does it: the sum has the larger of each dimension,
    and a missing element counts as zero. A block that widens adds its shortcut to its first
    channels; one whose strided convolution rounds down (3 x 3 from 8 x 8) is added to the
    top-left of the pooled shortcut (4 x 4)."""
    if a.shape == b.shape:
        return a + b
    size = [max(x, y) for x, y in zip(a.shape[1:], b.shape[1:], strict=True)]
    return _padded(a, size) + _padded(b, size)


def _padded(x: torch.Tensor, size: list[int]) -> torch.Tensor:
    channels, rows, cols = (want - have for want, have in zip(size, x.shape[1:], strict=True))
    return F.pad(x, (0, cols, 0, rows, 0, channels)) if channels or rows or cols else x
