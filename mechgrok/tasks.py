"""Algorithmic tasks: modular arithmetic and parity, as token sequences.

Modular tasks use the layout of Nanda et al.: the input is ``[a, b, =]`` where ``=`` is
token id ``p``; ``d_vocab = p + 1`` and the model predicts one of ``p`` residues at the last
position. Pairs are enumerated a-major (row ``i`` is ``a = i // p``, ``b = i % p``), so a
vector over all pairs reshapes to the ``p x p`` grid that the Fourier analyses transform.
Division skips ``b = 0``: its grid has ``p - 1`` columns (b = 1 .. p-1).

Parity: the input is the ``n_bits`` bits followed by ``=`` (token id 2); the label is the
XOR of the bits (or of the first ``k`` bits for sparse parity). Up to ``MAX_PARITY_BITS`` the
table holds every bit string; longer strings (Barak et al.'s and Hu et al.'s sparse parity has
n = 40) are a table of ``n_samples`` distinct strings drawn uniformly with ``data_seed``.

Tables (``op="table"``): any finite binary operation on n elements, given as its n x n table
``T[a, b]`` of ints in [0, n). The layout is the modular one with p = n: the input is
``[a, b, =]``, tokens 0..n-1 are the elements and token n is ``=``, ``d_vocab = n + 1``,
``d_vocab_out = n``, pairs enumerated a-major over the full n x n grid. ``p`` is derived from the
table (leave it None; a different value is refused). ``permutation_group_table(k)`` (S_k) and
``table_from_function(n, f)`` build common tables. Fourier measures need a cyclic group: a
table is analysed in the additive basis only if it is literally (a + b) mod n
(``is_cyclic_add_table``); every other table has the non-Fourier measures only.
"""

from __future__ import annotations

import itertools
import numbers
from dataclasses import asdict, dataclass
from collections.abc import Callable, Sequence
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from . import choices
from .fieldtypes import check_field_types

MODULAR_OPS: dict[str, tuple[str, Callable[[Tensor, Tensor, int], Tensor]]] = {
    "add": ("a + b", lambda a, b, p: (a + b) % p),
    "sub": ("a - b", lambda a, b, p: (a - b) % p),
    "mul": ("a * b", lambda a, b, p: (a * b) % p),
    "div": ("a / b", lambda a, b, p: (a * _inverses(p)[b]) % p),
    "quad": ("a^2 + ab + b^2", lambda a, b, p: (a * a + a * b + b * b) % p),
}
OP_ALIASES = {"+": "add", "-": "sub", "*": "mul", "x": "mul", "/": "div"}
OPS = choices.OPS  # the CLI's list, kept where nothing heavy is imported
assert tuple(MODULAR_OPS) == choices.MODULAR_OPS, "choices.MODULAR_OPS must list tasks.MODULAR_OPS"
MAX_PARITY_BITS = 20  # 2^20 sequences; beyond that the full dataset stops fitting in a batch
MAX_TABLE_N = 1024  # n^2 = 2^20 pairs, the same cap on the example table as parity's
DEFAULT_P = 113
MAX_SAMPLED_BITS = 62  # a bit string must fit an int64 code (to draw distinct strings)


def _inverses(p: int) -> Tensor:
    # b^(p-2) is b's inverse by Fermat (0 maps to 0 and is never used).
    return torch.tensor([pow(x, p - 2, p) for x in range(p)])


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % d for d in range(2, int(n**0.5) + 1))


@dataclass(frozen=True)
class TaskConfig:
    """What to learn and how to split it. Validated at construction."""

    op: str = "add"
    p: int | None = None  # None: 113 for the modular ops; for a table always n (derived from it)
    frac: float = 0.3
    seed: int = 0
    n_bits: int = 10  # parity only
    k_bits: int | None = None  # parity only: XOR of the first k bits (sparse parity); None = all
    # An explicit split (rows of the example table, in the order training should see them); the
    # test set is every other example. Given, it overrides ``frac``/``seed``: ``frac`` is set to
    # the fraction it implies. Checkpoints trained elsewhere are analysed with their own split.
    train_idx: Sequence[int] | None = None  # stored as a tuple
    # Parity only: a table of this many distinct random bit strings instead of all 2^n_bits
    # (required above MAX_PARITY_BITS bits). Drawn with ``data_seed``, not ``seed``: members of a
    # population that differ in their split seed must share one table.
    n_samples: int | None = None
    data_seed: int = 0
    # op="table" only: the n x n operation table T[a, b] (ints in [0, n)); stored as a tuple of
    # tuples (lists, numpy arrays and tensors are accepted and normalised).
    table: Any = None  # Any: normalised below from any nested sequence, array or tensor

    def __post_init__(self):
        check_field_types(self)
        op = OP_ALIASES.get(self.op, self.op)
        object.__setattr__(self, "op", op)
        if op not in OPS:
            raise ValueError(f"TaskConfig.op: unknown op {self.op!r}; allowed: {', '.join(OPS)} "
                             f"(or the symbols {', '.join(OP_ALIASES)})")
        if op == "table":
            rows = normalise_table(self.table)
            n = len(rows)
            if self.p is not None and self.p != n:
                raise ValueError(f"TaskConfig.p is derived from the table (n = {n}): leave it None or give {n}, "
                                 f"got p={self.p}")
            object.__setattr__(self, "table", rows)
            object.__setattr__(self, "p", n)
        elif self.table is not None:
            raise ValueError(f"TaskConfig.table applies to op='table' only, got a table for op {op!r}")
        elif self.p is None:
            object.__setattr__(self, "p", DEFAULT_P)
        if not 0.0 < self.frac < 1.0:
            raise ValueError(f"TaskConfig.frac must be in (0, 1), got {self.frac}")
        if op == "parity":
            top = MAX_PARITY_BITS if self.n_samples is None else MAX_SAMPLED_BITS
            if not 2 <= self.n_bits <= top:
                hint = (f"; up to {MAX_SAMPLED_BITS} with n_samples (a sampled table)"
                        if self.n_samples is None and self.n_bits > MAX_PARITY_BITS else "")
                raise ValueError(f"TaskConfig.n_bits must be in [2, {top}], got {self.n_bits}{hint}")
            if self.n_samples is not None and not 2 <= self.n_samples <= 2 ** self.n_bits:
                raise ValueError(f"TaskConfig.n_samples must be in [2, 2^n_bits = {2 ** self.n_bits}] or None, "
                                 f"got {self.n_samples}")
            if self.k_bits is not None and not 1 <= self.k_bits <= self.n_bits:
                raise ValueError(f"TaskConfig.k_bits must be in [1, n_bits={self.n_bits}] or None, "
                                 f"got {self.k_bits}")
        else:
            if self.n_samples is not None:
                raise ValueError(f"TaskConfig.n_samples applies to parity only (modular tasks enumerate "
                                 f"every pair), got n_samples={self.n_samples} for op {op!r}")
            if op != "table" and (self.p < 3 or not is_prime(self.p)):
                raise ValueError(f"TaskConfig.p must be a prime >= 3 (modular ops need a field), got {self.p}")
        if self.train_idx is not None:
            idx = tuple(int(i) for i in self.train_idx)
            n = self.n_examples
            if len(set(idx)) != len(idx):
                raise ValueError("TaskConfig.train_idx lists an example twice")
            bad = [i for i in idx if not 0 <= i < n]
            if bad:
                raise ValueError(f"TaskConfig.train_idx: index {bad[0]} out of range 0..{n - 1} "
                                 f"({n} examples)")
            if not 0 < len(idx) < n:
                raise ValueError(f"TaskConfig.train_idx must leave a non-empty train and test set "
                                 f"({len(idx)} of {n} examples given)")
            object.__setattr__(self, "train_idx", idx)
            object.__setattr__(self, "frac", len(idx) / n)

    @property
    def n_examples(self) -> int:
        """Size of the full example table (every pair, every bit string, or the sampled strings)."""
        if self.op == "parity":
            return 2 ** self.n_bits if self.n_samples is None else self.n_samples
        return self.p * (self.p - 1) if self.op == "div" else self.p * self.p

    # The sizes a model needs, known before the example table is built (budget.py sizes a run
    # from them without allocating it).
    @property
    def n_ctx(self) -> int:
        return self.n_bits + 1 if self.op == "parity" else 3

    @property
    def d_vocab(self) -> int:
        return 3 if self.op == "parity" else self.p + 1

    @property
    def d_vocab_out(self) -> int:
        return 2 if self.op == "parity" else self.p

    def to_dict(self) -> dict:
        return asdict(self)


def normalise_table(table) -> tuple[tuple[int, ...], ...]:
    """``table`` (nested lists or tuples, a numpy array or a tensor) as a tuple of tuples of ints,
    or a one-line ValueError naming ``TaskConfig.table``: it must be square, n x n with
    2 <= n <= ``MAX_TABLE_N``, of integers in [0, n)."""
    if table is None:
        raise ValueError("TaskConfig.table is required for op='table' (an n x n list of rows T[a][b]; "
                         "on the command line `--table FILE`)")
    if hasattr(table, "tolist"):  # numpy array or tensor
        table = table.tolist()
    if isinstance(table, (str, bytes)) or not isinstance(table, Sequence):
        raise ValueError(f"TaskConfig.table must be an n x n list of rows, got {type(table).__name__}")
    n = len(table)
    if n < 2:
        raise ValueError(f"TaskConfig.table must have n >= 2 elements, got n={n}")
    if n > MAX_TABLE_N:
        raise ValueError(f"TaskConfig.table has n={n} elements; at most {MAX_TABLE_N} ({MAX_TABLE_N}^2 pairs "
                         f"is the largest example table that fits a batch)")
    rows = []
    for a, row in enumerate(table):
        if hasattr(row, "tolist"):
            row = row.tolist()
        if isinstance(row, (str, bytes)) or not isinstance(row, Sequence):
            raise ValueError(f"TaskConfig.table must be square (n x n rows of n entries): row {a} is not a list")
        if len(row) != n:
            raise ValueError(f"TaskConfig.table must be square: {n} rows but row {a} has {len(row)} entries")
        out = []
        for b, v in enumerate(row):
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not float(v).is_integer():
                raise ValueError(f"TaskConfig.table entries must be integers: T[{a}][{b}] = {v!r}")
            if not 0 <= v < n:
                raise ValueError(f"TaskConfig.table entries must be in [0, {n}) (n = {n} elements): "
                                 f"T[{a}][{b}] = {v!r}")
            out.append(int(v))
        rows.append(tuple(out))
    return tuple(rows)


def table_from_function(n: int, f: Callable[[int, int], int]) -> tuple[tuple[int, ...], ...]:
    """The table ``T[a][b] = f(a, b)`` over the elements 0..n-1 (for ``TaskConfig(op="table",
    table=...)``; validated there)."""
    return tuple(tuple(int(f(a, b)) for b in range(n)) for a in range(n))


def permutation_group_table(k: int) -> tuple[tuple[int, ...], ...]:
    """The composition table of the symmetric group S_k (k! elements).

    Elements are the permutations of (0, .., k-1) in lexicographic order
    (``itertools.permutations(range(k))``: element 0 is the identity); a permutation is the
    tuple of images, ``s[i]`` = where i goes. ``T[a][b]`` is the index of ``a ∘ b``, the
    composition "first b, then a": ``(a ∘ b)[i] = a[b[i]]``. For k >= 3 the group is not
    abelian, so T is not symmetric."""
    if not 2 <= k <= 6:
        raise ValueError(f"permutation_group_table: k must be in [2, 6] (S_7 has 5040 elements, more than "
                         f"MAX_TABLE_N = {MAX_TABLE_N}), got {k}")
    perms = list(itertools.permutations(range(k)))
    index = {s: i for i, s in enumerate(perms)}
    return tuple(tuple(index[tuple(a[b[i]] for i in range(k))] for b in perms) for a in perms)


def is_cyclic_add_table(table) -> bool:
    """Whether ``table`` is addition mod n, ``T[a][b] = (a + b) mod n``, element for element (the
    one table the Fourier measures' additive basis applies to; an isomorphic relabelling is not
    recognised)."""
    n = len(table)
    return all(table[a][b] == (a + b) % n for a in range(n) for b in range(n))


class Task:
    """A dataset with a fixed seeded split. Everything lives on CPU; move slices as needed."""

    inputs: Int[Tensor, "n_examples n_ctx"]
    labels: Int[Tensor, " n_examples"]
    train_idx: Int[Tensor, " n_train"]
    test_idx: Int[Tensor, " n_test"]

    def __init__(self, cfg: TaskConfig, allow_large: bool | None = None):
        """``allow_large``: build the table even when ``budget.check_memory`` says it will not
        fit (default: ``budget.allowing_large`` or ``MECHGROK_ALLOW_LARGE``)."""
        from .budget import check_memory

        check_memory(cfg, allow_large=allow_large)  # before a byte of the table is allocated
        self.cfg = cfg
        if cfg.op == "parity":
            n = cfg.n_bits
            codes = torch.arange(2**n) if cfg.n_samples is None else sample_codes(n, cfg.n_samples, cfg.data_seed)
            bits = (codes[:, None] >> torch.arange(n - 1, -1, -1)) & 1
            k = n if cfg.k_bits is None else cfg.k_bits
            self.labels = bits[:, :k].sum(1) % 2
            eq = torch.full((len(codes), 1), 2)
            self.inputs = torch.cat([bits, eq], dim=1)
            self.a = self.b = None
        elif cfg.op == "table":
            n = cfg.p
            a = torch.arange(n).repeat_interleave(n)
            b = torch.arange(n).repeat(n)
            self.a, self.b = a, b
            self.labels = torch.tensor(cfg.table, dtype=torch.long).flatten()
            self.inputs = torch.stack([a, b, torch.full_like(a, n)], dim=1)
        else:
            p = cfg.p
            bs = torch.arange(1, p) if cfg.op == "div" else torch.arange(p)
            a = torch.arange(p).repeat_interleave(len(bs))
            b = bs.repeat(p)
            self.a, self.b = a, b
            self.labels = MODULAR_OPS[cfg.op][1](a, b, p)
            self.inputs = torch.stack([a, b, torch.full_like(a, p)], dim=1)
        if cfg.train_idx is not None:
            self.train_idx = torch.tensor(cfg.train_idx, dtype=torch.long)
            is_test = torch.ones(len(self.labels), dtype=torch.bool)
            is_test[self.train_idx] = False
            self.test_idx = torch.nonzero(is_test).flatten()
            return
        g = torch.Generator().manual_seed(cfg.seed)
        perm = torch.randperm(len(self.labels), generator=g)
        n_train = int(cfg.frac * len(perm))
        if n_train == 0 or n_train == len(perm):
            raise ValueError(f"TaskConfig.frac={cfg.frac} leaves an empty train or test set "
                             f"for {len(perm)} examples")
        self.train_idx, self.test_idx = perm[:n_train], perm[n_train:]

    # --- sizes a model needs -------------------------------------------------------------
    @property
    def op(self) -> str:
        return self.cfg.op

    @property
    def p(self) -> int:
        if self.cfg.op == "parity":
            raise AttributeError("parity tasks have no modulus p")
        return self.cfg.p

    @property
    def is_modular(self) -> bool:
        """A modular-arithmetic task (add/sub/mul/div/quad mod p); a table and parity are not."""
        return self.cfg.op not in ("parity", "table")

    @property
    def table(self) -> Tensor:
        """The n x n operation table (op="table" only)."""
        if self.cfg.op != "table":
            raise AttributeError(f"{self.describe()} is not a table task")
        return torch.tensor(self.cfg.table, dtype=torch.long)

    @property
    def d_vocab(self) -> int:
        return self.cfg.d_vocab

    @property
    def d_vocab_out(self) -> int:
        return self.cfg.d_vocab_out

    @property
    def n_ctx(self) -> int:
        return self.inputs.shape[1]

    @property
    def grid_shape(self) -> tuple[int, int]:
        """Shape of the (a, b) grid the examples enumerate (modular tasks only)."""
        p = self.p
        return (p, p - 1) if self.cfg.op == "div" else (p, p)

    # --- convenient slices ---------------------------------------------------------------
    @property
    def train_inputs(self) -> Tensor:
        return self.inputs[self.train_idx]

    @property
    def train_labels(self) -> Tensor:
        return self.labels[self.train_idx]

    @property
    def test_inputs(self) -> Tensor:
        return self.inputs[self.test_idx]

    @property
    def test_labels(self) -> Tensor:
        return self.labels[self.test_idx]

    @property
    def is_train(self) -> Tensor:
        """Boolean mask over all examples: True where the example is in the train split."""
        mask = torch.zeros(len(self.labels), dtype=torch.bool)
        mask[self.train_idx] = True
        return mask

    def describe(self) -> str:
        if self.cfg.op == "parity":
            k = self.cfg.k_bits or self.cfg.n_bits
            drawn = "" if self.cfg.n_samples is None else f", {self.cfg.n_samples} strings drawn (data seed {self.cfg.data_seed})"
            return f"parity of {k} of {self.cfg.n_bits} bits{drawn}"
        if self.cfg.op == "table":
            return f"table (n={self.cfg.p})"
        return f"{MODULAR_OPS[self.cfg.op][0]} mod {self.cfg.p}"

    def __repr__(self) -> str:
        split = "explicit split" if self.cfg.train_idx is not None else f"seed {self.cfg.seed}"
        return f"Task({self.describe()}, {len(self.train_idx)} train / {len(self.test_idx)} test, {split})"


def sample_codes(n_bits: int, n: int, seed: int) -> Int[Tensor, " n"]:
    """``n`` distinct ``n_bits``-bit strings as integer codes, uniform without replacement, in
    the order drawn: draw with replacement and drop repeats until there are ``n``."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.empty(0, dtype=torch.long)
    while len(codes) < n:
        bits = torch.randint(0, 2, (2 * (n - len(codes)) + 16, n_bits), generator=g)
        new = (bits * (1 << torch.arange(n_bits - 1, -1, -1))).sum(1)
        both = torch.cat([codes, new])
        _, inverse = torch.unique(both, return_inverse=True)
        first = torch.full((int(inverse.max()) + 1,), len(both)).scatter_reduce(0, inverse, torch.arange(len(both)), "amin")
        codes = both[first.sort().values]  # each distinct code once, at its first draw
    return codes[:n]


def make_task(op: str = "add", p: int | None = None, frac: float = 0.3, seed: int = 0, train_idx=None, **kw) -> Task:
    """A task; ``train_idx`` (any sequence or tensor of example rows) gives an explicit split
    (test = the rest) instead of the seeded ``frac`` split."""
    if train_idx is not None:
        train_idx = tuple(int(i) for i in torch.as_tensor(train_idx).flatten().tolist())
    return Task(TaskConfig(op=op, p=p, frac=frac, seed=seed, train_idx=train_idx, **kw))
