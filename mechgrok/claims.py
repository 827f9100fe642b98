"""The claims ledger's rules: a published setting against ours, and the verdict that follows.

A setting is a flat dict of the fields a source states (``SETTING_FIELDS``: task, p, model,
optimizer, length, seeds); ``setting_of`` makes ours from a run's config. ``differences`` lists
every field the source states whose value ours does not have, and ``verdict`` applies one rule:

    no data file                 -> "not run"
    a stated field differs       -> "not comparable (setting: FIELD ours vs published, ...)"
    same setting, the test holds -> "reproduced"
    same setting, it fails       -> "not reproduced (the test fails: RULE)"

A surrogate (a smaller p, fewer steps, another lr) can show that a mechanism works; it cannot
refute a claim, so its rows never read "not reproduced". What the surrogate showed is kept
apart, in ``agrees`` (does our result pass the claim's test at our setting).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# the fields a setting may state, in the order the ledger prints them
SETTING_FIELDS = ("task", "n_bits", "k_bits", "p", "frac", "n_layers", "d_model", "d_mlp", "normalization", "optimizer",
                  "lr", "weight_decay", "beta1", "beta2", "batch_size", "grokfast", "steps", "epochs", "checkpoints",
                  "continue_steps", "seeds")
OPS = {"add": "a+b", "sub": "a-b", "mul": "a*b", "div": "a/b", "parity": "parity", "table": "table"}
NORMS = {"none": "none", "LN": "pre-LN", "LNPre": "pre-LN"}


def setting_of(cfg: dict, seeds: int | None = None, **extra) -> dict:
    """The setting of a run's config (``RunConfig.to_dict()``, as the report JSONs store it),
    with ``seeds`` (how many) and any ``extra`` fields (e.g. ``checkpoints``)."""
    t, m, tr = cfg["task"], cfg["model"], cfg["train"]
    op = t["op"]
    s = {"task": OPS.get(op, op)}
    if op == "parity":
        s |= {"n_bits": t.get("n_bits"), "k_bits": t.get("k_bits") or t.get("n_bits")}
    else:
        s["p"] = t["p"]
    batch = tr.get("batch_size")
    s |= {"frac": t["frac"], "n_layers": m["n_layers"], "d_model": m["d_model"], "d_mlp": m["d_mlp"],
          "normalization": NORMS.get(m.get("normalization", "none"), m.get("normalization")),
          "optimizer": tr.get("optimizer", "adamw"), "lr": tr["lr"], "weight_decay": tr["weight_decay"],
          "beta1": tr["betas"][0], "beta2": tr["betas"][1], "batch_size": "full" if batch in (None, 0) else batch,
          "grokfast": tr.get("grokfast", "none"), "steps": tr["steps"]}
    n_train = _n_train(t)
    if n_train:
        # an epoch is one pass over the train set in minibatches (the last one short), as a DataLoader makes it
        s["epochs"] = tr["steps"] if s["batch_size"] == "full" else round(tr["steps"] / math.ceil(n_train / batch))
    if seeds is not None:
        s["seeds"] = seeds
    return s | extra


def _n_train(t: dict) -> int | None:
    if t["op"] == "parity":
        return None if t.get("n_samples") else int(t["frac"] * 2 ** t["n_bits"])
    pairs = t["p"] * (t["p"] - 1) if t["op"] == "div" else t["p"] ** 2
    return int(t["frac"] * pairs)


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "/".join(_fmt(x) for x in v)
    return str(v)


def differences(published: dict, ours: dict) -> list[str]:
    """``"FIELD OURS vs PUBLISHED"`` for every field the source states that ours differs in (a
    field ours does not record counts as different). More seeds than the source's is not a
    difference; fewer is."""
    out = []
    for k in [f for f in SETTING_FIELDS if f in published] + [f for f in published if f not in SETTING_FIELDS]:
        pub, mine = published[k], ours.get(k)
        if k == "seeds" and isinstance(mine, int) and isinstance(pub, int):
            if mine < pub:
                out.append(f"seeds {mine} vs {pub}")
        elif mine is None or not _same(mine, pub):
            out.append(f"{k} {'(not recorded)' if mine is None else _fmt(mine)} vs {_fmt(pub)}")
    return out


def describe(setting: dict) -> str:
    """A setting as one line: "a/b p=47 frac=0.5 n_layers=4 ..."."""
    keys = [f for f in SETTING_FIELDS if f in setting] + [f for f in setting if f not in SETTING_FIELDS]
    return ", ".join(f"{k} {_fmt(setting[k])}" if k != "task" else _fmt(setting[k]) for k in keys
                     if setting[k] is not None)


@dataclass(frozen=True)
class Result:
    """What a data file says about one claim: ``ours`` (text), ``setting`` (ours, ``setting_of``),
    ``n`` (runs behind it), ``agrees`` (the claim's test passes at our setting), ``rule`` (the test)."""

    ours: str
    setting: dict
    n: int | str
    agrees: bool | None
    rule: str
    extra: dict = field(default_factory=dict)


def verdict(published_setting: dict, result: Result | None, published: str = "") -> tuple[str, list[str]]:
    """The ledger's verdict (module docstring) and the setting differences behind it."""
    if result is None:
        return "not run", []
    diff = differences(published_setting, result.setting)
    if diff:
        return f"not comparable (setting: {'; '.join(diff)})", diff
    if result.agrees is None:
        return "no test", diff
    return ("reproduced" if result.agrees else f"not reproduced (the test fails: {result.rule})"), diff
