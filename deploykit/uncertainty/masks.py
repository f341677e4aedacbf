"""Dropout masks for the MC graph from a pool of pre-drawn blocks: a few random bits per row, not one draw per element.

onnxruntime's ``Dropout(training_mode=true)`` draws one random number per
element (~5 ns each): on the chapter's model (Dropout on the 784 inputs and on
both hidden layers, T = 100) that is 118,400 draws per MC call, more than the
network's own arithmetic. :attr:`MaskKind.POOL` (the MC graph's default for models whose weights dwarf its
tables, see :func:`resolve_mask`) draws instead ONE random offset per row and reads the row's mask from a table fixed
at export, with standard ONNX operators only (any onnxruntime client runs it):

1. at export, per dropout layer: a table of ``K + nb - 1`` blocks of ``b``
   keep values (``K = pool`` blocks, a power of two; ``nb = ceil(W / b)`` blocks
   per row of width ``W``; the last ``nb - 1`` blocks repeat the first ones, so
   every window wraps around). Each of the ``b`` columns of the K blocks holds
   exactly ``round(rate * K)`` zeros at random places, so the represented rate
   is ``round(rate * K) / K``, within ``1 / (2K)`` of the requested rate; kept
   values are scaled by ``1 / (1 - represented rate)``, so E[output] = x exactly;
2. per call and row: ``log2(K)`` random bits (the keep mask of an ONNX
   ``Dropout`` with ratio 0.5, so seeds behave exactly as in the plain graph,
   see :mod:`deploykit.uncertainty.mc_graph`; one such node draws the bits of
   every dropout layer of the graph) give an offset ``o`` uniform in
   [0, K); the row's mask is blocks ``o + perm[j]`` for j < nb (``perm``: a
   random permutation of range(nb), fixed at export), read by ONE ``Gather``
   of nb blocks, reshaped to [R, nb * b] and cut to W.

What it gives (tested in ``tests/uncertainty/test_masks.py``):
- the marginal keep rate of every element is exactly ``1 - represented rate``
  (the offset is uniform and every column has the same count);
- within one row, the elements come from distinct table entries (the nb
  blocks of a window are distinct), drawn independently at export. Over the K
  masks of the one table a model holds, two positions are therefore correlated
  like K i.i.d. pairs: by O(1/sqrt(K)) (about +-0.016 at K = 4096), fixed at
  export, where i.i.d. masks would give 0;
- two rows (samples) use the same mask only when their offsets collide:
  probability 1/K per pair (K = 4096: at T = 100, ~1.2 of the 4,950 pairs of a
  call share their mask in that layer; with three dropout layers, the whole
  network's masks of two samples coincide with probability 1/K^3). Two rows
  with nearby offsets share some blocks, but at block positions scrambled by
  ``perm``: they never drop a shifted copy of one pattern (which, on images,
  would drop neighbouring pixels alike);
- the distinct masks of a layer are K (its table), not 2^W: the MC mean
  converges, as T grows, to the average over these K masks (per layer), which
  differs from the exact expectation by about (std over masks) / sqrt(K).
  At T = 100 that is well below the Monte Carlo error of the call.

Dropout and AlphaDropout on [R, d1, ..., dk] draw one mask of width
W = d1 * ... * dk per row (every element), reshaped onto the input;
AlphaDropout reads bool keep flags (``Where``, then Keras's affine correction
at the represented rate); SpatialDropout draws one mask of width C (channels)
per row and broadcasts it over the positions.

Size: each dropout layer adds a uint8 table of ``(K + nb - 1) * b`` bytes
(K = 4096, W = 784: 0.12 MB; the chapter's three layers: 0.34 MB on a 1.08 MB
model). :attr:`MaskKind.DROPOUT` keeps the exact i.i.d. masks of ONNX
``Dropout`` (one draw per element; MC calls ~1.7x slower on the chapter's model).
"""

from __future__ import annotations

import math

import numpy as np

from deploykit.core.contract import MaskKind  # noqa: F401  (defined with the contract: configs name it without numpy)

BLOCK = 32  # target block length b: fewer, longer copies in Gather; the table grows as K * b
DEFAULT_POOL = 4096  # K: distinct masks per dropout layer


def block_length(width: int, target: int = BLOCK) -> int:
    """b: the divisor of ``width`` nearest to ``target`` within [target/2, 2*target], else ``target`` (the row is
    cut)."""
    divisors = [d for d in range(target // 2, 2 * target + 1) if width % d == 0]
    return min(divisors, key=lambda d: (abs(d - target), -d)) if divisors else min(target, width)


#: MaskKind.AUTO takes the pooled masks when their tables cost at most this share of the model's float32 weights.
AUTO_TABLE_SHARE = 0.5


def mask_width(shape: tuple, spatial: bool) -> int:
    """Values one row's mask holds for an input of per-row ``shape``: one per channel (spatial dropout) or per
    element."""
    return int(shape[-1]) if spatial else int(np.prod(shape))


def table_bytes(width: int, pool: int) -> int:
    """The bytes one pooled-mask table of a ``width``-wide mask adds to the model: (pool + nb - 1) blocks of b."""
    b = block_length(width)
    return (pool + math.ceil(width / b) - 1) * b


def resolve_mask(kind: MaskKind, widths: list[int], weight_bytes: int, pool: int) -> MaskKind:
    """The mask kind a graph is built with: AUTO becomes POOL when the tables of the dropout layers (their mask
    ``widths``) cost at most :data:`AUTO_TABLE_SHARE` of the model's ``weight_bytes``, else DROPOUT.

    A table costs ~pool x 32 bytes (131 KB at 4096) whatever the layer's width: on the chapter's 784-300-100
    model the three tables add 0.34 MB to 1.07 MB of weights and make one MC call ~1.4x the deterministic model
    instead of ~2.3x; on a 14k-parameter model they would make the file 6x larger to save microseconds.
    """
    if kind is not MaskKind.AUTO:
        return kind
    tables = sum(table_bytes(w, pool) for w in widths)
    return MaskKind.POOL if tables <= AUTO_TABLE_SHARE * weight_bytes else MaskKind.DROPOUT


def represented_rate(rate: float, pool: int) -> float:
    """The rate a pool of ``pool`` blocks represents: round(rate * pool) / pool."""
    return round(rate * pool) / pool


def pool_table(rate: float, width: int, pool: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(table, perm)``: keep flags uint8 [pool + nb - 1, b] (exactly round(rate * pool) zeros per column of
    the first ``pool`` blocks; the rest repeat the first blocks) and the block order ``perm`` int64 [nb]."""
    b = block_length(width)
    nb = math.ceil(width / b)
    zeros = round(rate * pool)
    columns = np.ones((b, pool), np.uint8)
    columns[:, :zeros] = 0
    blocks = rng.permuted(columns, axis=1).T
    return np.concatenate([blocks, blocks[: nb - 1]]), rng.permutation(nb).astype(np.int64)


def _rows(g, x: str, n: int, rank: int = 2, width: int = 0) -> str:
    """A tensor [R, n] for the rows R of ``x`` (its values do not matter: only a Dropout's keep mask of it is used)."""
    if rank == 2 and width >= n:
        return g.op("Slice", [x, g.const([0], np.int64), g.const([n], np.int64), g.const([1], np.int64)])  # one node
    rows = g.op("Slice", [g.op("Shape", [x]), g.const([0], np.int64), g.const([1], np.int64)])
    return g.op("ConstantOfShape", [g.op("Concat", [rows, g.const([n], np.int64)], axis=0)])


def _offset(g, x: str, rank: int, width: int, bits: int) -> str:
    """[R, 1] int64, uniform in [0, 2^bits): the random offset of each row for the next pooled layer.

    The bits are the keep mask of a Dropout (ratio 0.5). The first pooled layer of a graph draws those of
    all ``g.pool_layers`` layers with one Dropout node (its rows are every sampled layer's rows, T * N);
    the later layers take their column, so a call runs one Dropout node, not one per layer.
    """
    from onnx import TensorProto

    if not g.pending_offsets:
        n = max(g.pool_layers - g.offsets_drawn, 1)
        _, draws = g.op(
            "Dropout", [_rows(g, x, n * (bits + 1), rank, width), g.const(0.5), g.true()], n_out=2, **g.dropout_seed()
        )
        # Column 0 of each layer's bits is skipped: onnxruntime seeds a fresh engine per call with seed + k, so
        # a mask's first element barely changes from one call to the next; the other elements do.
        # Integer arithmetic, not a MatMul: weight quantizers (int8-dynamic) would round a float MatMul's powers of two.
        weights = g.const([0] + [2**i for i in range(bits)], np.int64)
        draws = g.op("Cast", [draws], to=TensorProto.INT64)
        if n == 1:
            g.pending_offsets = [g.reduce("ReduceSum", g.op("Mul", [draws, weights]), [1], keepdims=1)]
        else:
            grouped = g.op("Reshape", [draws, g.const([0, n, bits + 1], np.int64)])
            offsets = g.reduce("ReduceSum", g.op("Mul", [grouped, weights]), [2])  # [R, n]
            g.pending_offsets = [g.op("Gather", [offsets, g.const([k], np.int64)], axis=1) for k in range(n)]
        g.offsets_drawn += n
    return g.pending_offsets.pop(0)


def pool_keep(
    g, x: str, rank: int, width: int, rate: float, pool: int, rng: np.random.Generator, *, as_bool: bool = False
) -> str:
    """A mask of ``width`` values per row of ``x`` (rank ``rank``, R rows): [R, width] float (0 or 1 / (1 -
    represented rate)), or bool keep flags with ``as_bool``; the caller reshapes it onto ``x`` (every element,
    or one value per channel). ``g`` is the MC graph builder (``op``, ``const``, ``dropout_seed``)."""
    table, perm = pool_table(rate, width, pool, rng)
    b, nb, bits = table.shape[1], len(perm), int(math.log2(pool))
    offset = _offset(g, x, rank, width, bits)
    index = g.op("Add", [offset, g.const(perm[None, :], np.int64)])  # [R, nb]
    source = g.const(table.astype(bool), np.bool_) if as_bool else g.const(table, np.uint8)
    mask = g.op("Reshape", [g.op("Gather", [source, index], axis=0), g.const([0, nb * b], np.int64)])
    if nb * b != width:
        mask = g.op("Slice", [mask, g.const([0], np.int64), g.const([width], np.int64), g.const([1], np.int64)])
    if as_bool:
        return mask
    scale = 1.0 / (1.0 - represented_rate(rate, pool))
    return g.op("DequantizeLinear", [mask, g.const(scale), g.const(0, np.uint8)])  # one pass: flag * scale
