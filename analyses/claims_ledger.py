"""The claims ledger: every published claim mechgrok re-measures, next to what our committed data
says, with the verdict the rule in ``mechgrok.claims`` gives; and every result table of README.md
and figures/README.md, written from the data files between ``<!-- NAME:begin -->`` and
``<!-- NAME:end -->`` markers.

    python analyses/claims_ledger.py            # writes figures/CLAIMS.md, figures/CLAIMS.json and the blocks
    python analyses/claims_ledger.py --check    # writes nothing; exit 1 naming what differs from the data

Inputs: ``figures/claims.json`` (the published claims: facts from the sources, hand-curated) and
the result files under figures/ that each claim names. Per claim, an extractor below reads the
data file and returns ours, our setting (from the config recorded in the file), n, and whether
the claim's test passes at our setting; ``mechgrok.claims.verdict`` turns that into the verdict.
A claim whose data file does not exist (a re-run not made yet) reads "not run".
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import sys
from pathlib import Path

import pandas as pd

from mechgrok import experiment as ex
from mechgrok.claims import Result, describe, differences, setting_of, verdict
from mechgrok.cycles import erank_window_full
from mechgrok.presets import configure

ROOT = Path(__file__).resolve().parent.parent
GROKKED, BLOCKED = 0.9, 0.5  # our grokked threshold (milestones); seed 000's blocked/grokked split (its categories)


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _med(xs) -> float:
    xs = [x for x in xs if x is not None and x == x]
    return statistics.median(xs) if xs else float("nan")


def _script(name: str):
    """A script of analyses/ as a module (for its constants: SMALL, POPULATIONS, ...)."""
    here = str(Path(__file__).parent)
    if here not in sys.path:  # the scripts import each other (grokfast_vs_momentum: momentum_sweep)
        sys.path.insert(0, here)
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --- extractors: (claim, data file) -> Result ------------------------------------------------------


def _category(acc: tuple[float, float], threshold: float) -> str:
    """Seed 000's three categories from the final test accuracy at the two checkpoints."""
    early, late = (a >= threshold for a in acc)
    return {(False, False): "always blocks", (True, True): "never blocks", (False, True): "phase-dependent"}.get(
        (early, late), "grokks early only")


PLATEAU_TOLERANCE = 0.05  # checkpoints this close, as fractions of the plateau, sit at "the same place" on it


def _plateau_fractions(steps, mem, grok) -> list[float] | None:
    return None if None in (mem, grok) else [(s - mem) / (grok - mem) for s in steps]


def _checkpoints_on_the_plateau(meta: dict, root: Path):
    """The setting's ``checkpoints`` for a freezing report. Steps chosen as fractions of our own
    plateau (``--at-fractions``; issue 20 allows it when our run's timing differs) count as seed
    000's 7k and 11k when each lies within PLATEAU_TOLERANCE of where those sit on its plateau,
    and our steps go in ``placed_at``; otherwise our steps, compared as steps."""
    ours = meta["from_steps"]
    if not meta.get("checkpoint_rule", "the steps given").startswith("the saved checkpoints nearest"):
        return {"checkpoints": ours}
    claims = _json(root / "figures/claims.json")
    pub_steps = claims["settings"]["seed000"]["checkpoints"]
    f_ours = _plateau_fractions(ours, meta["base_memorisation_step"], meta["base_grokking_step"])
    f_pub = _plateau_fractions(pub_steps, *claims["facts"]["seed000_plateau"])
    if f_ours is None or any(abs(a - b) > PLATEAU_TOLERANCE for a, b in zip(f_ours, f_pub)):
        return {"checkpoints": ours}
    return {"checkpoints": pub_steps, "placed_at": "; ".join(
        f"{p}'s place: our {s} ({a:.2f} of our plateau, seed 000's {b:.2f})" for p, s, a, b in zip(pub_steps, ours, f_ours, f_pub))}


def freezing(claim, path, root):
    d = _json(path)
    meta, name = d["meta"], claim["published"]["intervention"]
    acc = tuple(next((r["final_test_acc"] for r in d["results"] if r["name"] == name and r["from_step"] == s), None)
                for s in meta["from_steps"])
    if None in acc:  # a report of a study still running: this intervention is not done from both checkpoints
        return None
    pub = claim["published"]["acc"]
    ours_cat, pub_cat = _category(acc, BLOCKED), _category(pub, BLOCKED)
    setting = setting_of(meta["config"], seeds=1, **_checkpoints_on_the_plateau(meta, root),
                         continue_steps=meta["steps"])
    return Result(f"{_pct(acc[0])} -> {_pct(acc[1])}: {ours_cat} at 0.5 ({_category(acc, GROKKED)} at 0.9)",
                  setting, 1, ours_cat == pub_cat,
                  f"category by final test acc >= 0.5 at each checkpoint (seed 000's split); published "
                  f"{_pct(pub[0])} -> {_pct(pub[1])} is {pub_cat}",
                  {"acc": acc, "category_0.5": ours_cat, "category_0.9": _category(acc, GROKKED)})


def _sweep_setting(d: dict, n: int, fixed: dict | None = None) -> dict:
    """Setting of a sweep-made report: its base config with the script's --set overrides applied."""
    cfg = d["base"]
    sets = dict(kv.split("=", 1) for kv in json.loads(d["args"].get("set", "[]").replace("'", '"') or "[]"))
    over = (fixed or {}) | {k: float(v) if k in {"frac", "lr"} else v for k, v in sets.items()}
    base = configure(_from_dict(cfg), **over) if over else _from_dict(cfg)
    return setting_of(base.to_dict(), seeds=n)


def _from_dict(cfg: dict):
    from mechgrok.config import RunConfig

    return RunConfig.from_dict(cfg)


def weight_decay(claim, path, root):
    """The per-seed sweeps' report (analyses/weight_decay_comparison.py): the median over seeds
    of the test accuracy at 150 epochs per weight decay, against seed 001's single run."""
    d = _json(path)
    summ = {r["weight_decay"]: r for r in d["summary"]}
    pub = dict(zip(claim["published"]["weight_decay"], claim["published"]["test_acc"]))
    ours = [summ[w]["test_acc"]["median"] for w in pub]
    n = min(summ[w]["n"] for w in pub)
    cfg = _from_dict({k: d["config"][k] for k in ("task", "model", "train")})
    s = setting_of(configure(cfg, steps=d["table"][0]["budget"]).to_dict(), seeds=n)
    s.pop("weight_decay")  # the swept field
    close = all(abs(o - p) <= 0.1 for o, p in zip(ours, pub.values()))
    return Result(" / ".join(f"{o:.3f}" for o in ours) + f" (medians over {n} seeds)", s, n, close,
                  "each median test accuracy within 0.1 of the published one",
                  {"n_grokked": {w: summ[w]["n_grokked"] for w in pub}})


def _find(d, keys: set):
    """The first dict in ``d`` (depth first) that has every key in ``keys``."""
    if isinstance(d, dict):
        if keys <= d.keys():
            return d
        items = d.values()
    elif isinstance(d, list):
        items = d
    else:
        return None
    for v in items:
        hit = _find(v, keys)
        if hit is not None:
            return hit
    return None


def single_run(claim, path, root):
    """A re-run's report (any layout): its config (a dict with task/model/train) and its final
    metrics (a dict with test_acc or final_test_acc)."""
    d = _json(path)
    ours_only = {k: v for k, v in d.items() if k != "published"}  # never the paper's numbers as ours
    cfg = _find(ours_only, {"task", "model", "train"})
    fin = next((x for x in (_find(ours_only.get("summary"), {"final_test_acc"}), _find(ours_only, {"final_test_acc"}),
                            _find(ours_only, {"test_acc"})) if x is not None), None)
    if cfg is None or fin is None:
        raise ValueError(f"{path}: no config (task/model/train) or final metrics (test_acc) found")
    get = lambda k: fin.get(f"final_{k}", fin.get(k))  # noqa: E731
    pub = claim["published"]
    if "grokked" in pub:
        g = fin.get("grokked_step")
        agrees = g is not None and (fin.get("memorised_step") is None or g > fin["memorised_step"])
        ours = f"memorised {fin.get('memorised_step')}, grokked {g}, final test acc {get('test_acc'):.3f}"
        rule = "grokks after memorising"
    else:
        agrees = all(abs(get(k) - v) <= max(0.1 * abs(v), 0.02) for k, v in pub.items() if get(k) is not None)
        ours = ", ".join(f"{k} {get(k):.4g}" for k in pub if get(k) is not None)
        rule = "each number within 10% (accuracies within 0.02)"
    return Result(ours, setting_of(cfg, seeds=1), 1, agrees, rule)


def parity(claim, path, root):
    d = _json(path)
    rows = d["rows"]
    decay = [r for r in rows if r["weight decay"] > 0]
    none = [r for r in rows if r["weight decay"] == 0]
    gen = all(r["grokked at"] is not None for r in decay)
    stuck = [r["seed"] for r in none if r["grokked at"] is None]
    plateau = [r["seed"] for r in decay if r["grokked at"] and r["memorised at"] and r["grokked at"] > r["memorised at"]]
    ours = (f"wd {decay[0]['weight decay']:g}: {sum(r['grokked at'] is not None for r in decay)}/{len(decay)} generalise "
            f"(after a plateau: seeds {plateau}); wd 0: seeds {stuck} stay memorised, "
            f"norm at end {_med([r['norm at end'] for r in decay]):.1f} vs {_med([r['norm at end'] for r in none]):.1f}")
    s = _sweep_setting(d, len({r["seed"] for r in rows}), {"steps": int(d["args"]["steps"])})
    s.pop("weight_decay")
    return Result(ours, s, len(rows), gen and bool(stuck),
                  "every decayed seed generalises and at least one undecayed seed does not")


def _nanda_setting(root: Path) -> tuple[dict, str]:
    """Our Nanda run's setting: figures/nanda/summary.json's config when the analysis wrote one,
    else the nanda preset at phases.json's final step (phases.json records no config)."""
    summ = root / "figures/nanda/summary.json"
    if summ.exists():
        cfg = _find(_json(summ), {"task", "model", "train"})
        if cfg is not None:
            return setting_of(cfg, seeds=1), str(summ.relative_to(root))
    ph = _json(root / "figures/nanda/phases.json")
    return setting_of(configure("nanda", steps=ph["final_step"]).to_dict(), seeds=1), "preset nanda at phases.json's final_step"


def nanda_keys(claim, path, root):
    ph = _json(path)
    n = claim["published"]["n_keys"]
    return Result(f"{len(ph['key_freqs'])}: {ph['key_freqs']}", _nanda_setting(root)[0], 1, len(ph["key_freqs"]) == n,
                  "the same number of key frequencies (which ones depend on the seed)")


def _last_spectrum(table: pd.DataFrame, prefix: str = "W_E_k") -> pd.Series:
    cols = [c for c in table.columns if c.startswith(prefix) and c != f"{prefix}0"]
    return table[cols].iloc[-1]


def nanda_embed(claim, path, root):
    t = pd.read_csv(path)
    spec = _last_spectrum(t)
    big = [int(c.rsplit("k", 1)[1]) for c, v in spec.items() if v > spec.max() / 4]
    return Result(f"{len(big)}: {big} (> 1/4 of the largest, step {int(t['step'].iloc[-1])})", _nanda_setting(root)[0], 1,
                  len(big) == claim["published"]["n"], "the same count of frequencies above 1/4 of the largest norm")


def nanda_neurons(claim, path, root):
    t = pd.read_csv(path)
    k = int((t["share"] > 0.85).sum())
    pub = claim["published"]
    return Result(f"{k} / {len(t)} ({k / len(t):.1%})", _nanda_setting(root)[0], 1,
                  abs(k / len(t) - pub["clustered"] / pub["of"]) <= 0.05, "share of clustered neurons within 5 points")


def nanda_phases(claim, path, root):
    ph = _json(path)
    ours = [ph["circuit_start"], ph["cleanup_start"], ph["cleanup_end"]]
    pub = claim["published"]["bounds"]
    return Result(f"0 - {ours[0]}, {ours[0]} - {ours[1]}, {ours[1]} - {ours[2]}", _nanda_setting(root)[0], 1,
                  all(abs(o - p) <= 0.25 * p for o, p in zip(ours, pub)), "each boundary within 25% of the published one")


def nanda_loss(claim, path, root):
    t = pd.read_csv(path).iloc[-1]
    pub = claim["published"]["loss"]
    return Result(f"train {t['train_loss']:.3g}, test {t['test_loss']:.3g} (step {int(t['step'])})", _nanda_setting(root)[0],
                  1, t["test_loss"] <= 3 * pub, "test loss within 3x of the published final loss")


def _latent_root(claim: dict, root: Path) -> Path:
    """training_maps.py's output folder that the claim's data file is in: figures/latent (the small
    scale) or figures/latent_full (the presets' own); its populations are subfolders."""
    data = root / claim["data"]
    return data.parent.parent if data.parent.name == claim["population"] else data.parent


def _latent_setting(claim: dict, root: Path) -> tuple[dict, int]:
    """A latent population's setting. From its ``setting.json`` (the members' config and how many,
    written by training_maps.py) where there is one; else (older reports) training_maps.py's small
    preset and overrides for it, with the steps statistics.csv reaches and the members it holds."""
    population = claim["population"]
    d = _latent_root(claim, root) / population
    if (d / "setting.json").exists():
        s = _json(d / "setting.json")
        return setting_of(s["config"], seeds=int(s["members"])), int(s["members"])
    tm = _script("training_maps")
    preset, over, _ = tm.POPULATIONS[population]
    stats = pd.read_csv(d / "statistics.csv")
    members = stats["run"].nunique() if "run" in stats else stats.iloc[:, 0].nunique()
    cfg = configure(preset, **(tm.SMALL[preset] | over | {"steps": int(stats["step"].max())}))
    return setting_of(cfg.to_dict(), seeds=int(members)), int(members)


def _detours(d: Path) -> pd.DataFrame:
    det = pd.read_csv(d / "detours.csv")
    states = pd.read_csv(d / "states.csv")
    return det.merge(states[["state", "l2"]], on="state", how="left") if "l2" in states else det


def latent_detour(claim, path, root):
    d = _detours(_latent_root(claim, root) / claim["population"])
    setting, n = _latent_setting(claim, root)
    top_l2 = int(d.loc[d["l2"].idxmax(), "state"])
    detours = d[d["detour"]].sort_values("coef", ascending=False)
    strongest = int(detours["state"].iloc[0]) if len(detours) else None
    rank = lambda s: int((d["l2"] > float(d.loc[d["state"] == s, "l2"].iloc[0])).sum()) + 1  # noqa: E731
    each = "; ".join(f"S{int(r.state)} l2 {r.l2:.2f} coef {r.coef:+.0f}{' (detour)' if r.detour else ''}"
                     for r in d.sort_values("l2", ascending=False).itertuples())
    ours = (f"highest-L2 state S{top_l2} is {'a' if top_l2 in set(detours['state']) else 'not a'} detour; "
            f"the strongest detour S{strongest} is L2 rank {rank(strongest)} of {len(d)}. Every state: {each}")
    return Result(ours, setting, n, top_l2 in set(detours["state"]),
                  "the highest-L2 state is a detour (positive, significant coefficient)",
                  {"strongest_detour": strongest, "strongest_detour_l2_rank": rank(strongest) if strongest is not None else None})


def _routes(d: Path) -> pd.Series:
    """Each member's route (training_maps.routes: its Viterbi path, repeats collapsed) from paths.csv."""
    paths = pd.read_csv(d / "paths.csv").sort_values(["member", "step"])
    return paths.groupby("member")["state"].apply(
        lambda p: "-".join(str(int(x)) for i, x in enumerate(p.tolist()) if i == 0 or x != p.tolist()[i - 1]))


def latent_ln(claim, path, root):
    """Hu et al.: LayerNorm makes the paths more uniform. With every route unique (20 members,
    200 checkpoints, 8 states) the commonest route's share says nothing, so the test is the
    spread of convergence times (``latent.convergence_spread``): smaller with LayerNorm by the
    Brown-Forsythe test, p < 0.05, over the members of both populations that grokked (at least
    3 each)."""
    from mechgrok.latent import ConvergenceSpread, convergence_spread

    setting, n = _latent_setting(claim, root)
    top = _latent_root(claim, root)
    ln, plain = _routes(top / "modular_ln"), _routes(top / "modular")
    share = lambda r: float(r.value_counts(normalize=True).iloc[0])  # noqa: E731
    sp = convergence_spread(*(pd.read_csv(top / p / "statistics.csv") for p in ("modular_ln", "modular")))

    def spread(g, members):
        cv = f"{ConvergenceSpread.cv(g):.2f}" if len(g) > 1 else "-"
        return f"{len(g)} of {members} grokked, grokking-step CV {cv}"

    ours = (f"with LN: {spread(sp.a, ln.size)}, {ln.nunique()} routes, the commonest taken by {share(ln):.0%}; "
            f"without: {spread(sp.b, plain.size)}, {plain.nunique()} routes, {share(plain):.0%}")
    rule = ("the convergence (grokking) steps spread less with LayerNorm: lower CV and Brown-Forsythe p < 0.05 "
            "(>= 3 grokked members each)")
    if sp.p is None:
        return Result(ours + "; too few grokked members to compare spreads", setting, n, None, rule)
    lower = ConvergenceSpread.cv(sp.a) < ConvergenceSpread.cv(sp.b)
    return Result(ours + f"; Brown-Forsythe p = {sp.p:.2g}", setting, n, bool(lower and sp.p < 0.05), rule,
                  {"brown_forsythe_p": sp.p})


def latent_parity(claim, path, root):
    d = _detours(_latent_root(claim, root) / claim["population"])
    setting, n = _latent_setting(claim, root)
    det = d[d["detour"]]
    ours = ", ".join(f"S{int(r.state)} ({r.label}) +{r.coef:.0f} steps/ckpt (p = {r.p_value:.2g})"
                     for r in det.itertuples()) or "none"
    return Result(f"detour states: {ours}", setting, n, bool(len(det)), "at least one detour state")


def _momentum(path):
    d = _json(path)
    return d, {r["beta1"]: r for r in d["beta1"]}, {r["weight_decay"]: r for r in d["wd"]}


def _momentum_setting(d: dict, sweep: str, rows: list[dict]) -> dict:
    n = min(r["n"] for r in rows)
    over = {"steps": int(d["args"]["wd_steps"])} if sweep == "wd" and d["args"].get("wd_steps") not in (None, "None") else {}
    if sweep == "wd":
        over["beta1"] = 0.0
    s = _sweep_setting(d, n, over)
    s.pop("weight_decay" if sweep == "wd" else "beta1")
    return s


def beta1_zero(claim, path, root):
    d, b, _ = _momentum(path)
    r = b[0.0]
    return Result(f"median {r['delay_median']:g} (IQR {r['delay_q25']:g}-{r['delay_q75']:g}), {r['n_grokked']}/{r['n']} grok",
                  _momentum_setting(d, "beta1", d["beta1"]), r["n"],
                  abs(r["delay_median"] - claim["published"]["delay"]) <= 100, "median delay within 100 steps of ~300")


def beta1_flat(claim, path, root):
    d, b, _ = _momentum(path)
    low = [b[k]["delay_median"] for k in sorted(b) if k <= 0.4]
    lo, hi = claim["published"]["range"]
    return Result(" -> ".join(f"{x:g}" for x in low) + f" at beta1 {', '.join(f'{k:g}' for k in sorted(b) if k <= 0.4)}",
                  _momentum_setting(d, "beta1", d["beta1"]), min(b[k]["n"] for k in b),
                  max(low) - min(low) <= hi - lo, f"spread of the medians <= {hi - lo} steps (the published range's)")


def beta1_high(claim, path, root):
    d, b, _ = _momentum(path)
    base = b[0.0]["delay_median"]
    high = {k: b[k]["delay_median"] / base for k in sorted(b) if k >= 0.8}
    lo, hi = claim["published"]["factor"]
    return Result(", ".join(f"{v:.1f}x at {k:g}" for k, v in high.items()), _momentum_setting(d, "beta1", d["beta1"]),
                  min(b[k]["n"] for k in b), all(lo * 0.75 <= v <= hi * 1.25 for v in high.values()),
                  f"median delay at beta1 >= 0.8 is {lo}-{hi}x beta1 = 0's (+-25%)")


def wd_rate(claim, path, root):
    d, _, w = _momentum(path)
    pub = claim["published"]
    r = w[pub["weight_decay"]]
    rate = r["n_grokked"] / r["n"]
    pub_rate = pub["grokked"] / pub.get("of", 30)
    ours = f"{r['n_grokked']}/{r['n']} grok" + (f", delay median {r['delay_median']:g}" if r["n_delay"] else "") + \
        f", final test acc {r['final_test_acc_mean']:.2f} mean"
    ok = abs(rate - pub_rate) <= 0.2 and ("delay" not in pub or abs(r["delay_median"] - pub["delay"]) <= 100)
    return Result(ours, _momentum_setting(d, "wd", d["wd"]), r["n"], ok,
                  "grok rate within 0.2 of the published one" + (" and delay within 100 steps" if "delay" in pub else ""))


def wd_no_memorise(claim, path, root):
    d, _, w = _momentum(path)
    r = w[claim["published"]["weight_decay"]]
    return Result(f"{r['n_grokked']}/{r['n']} grok, {r['n_grokked_before_memorising']} before memorising; "
                  f"delay median {r['delay_median']:g}", _momentum_setting(d, "wd", d["wd"]), r["n"],
                  r["n_grokked_before_memorising"] > r["n_grokked"] / 2, "most seeds generalise before memorising")


def _arm_median(a: pd.DataFrame):
    """An arm's median grokking step, a member that did not grok within its budget counting as
    later than all: a number, or the string "> X" (``ex.censored_quartiles``)."""
    steps = [int(s) if g else None for s, g in zip(a["grokked_step"], a["grokked"])]
    return ex.censored_quartiles(steps, int(a["budget"].min()))["median"]


def _at_least(m) -> float:
    """A censored median as the least it can be ("> X": X)."""
    return float(m[2:]) if isinstance(m, str) else m


def _at_most(m) -> float:
    """A censored median as the most it can be ("> X": no bound)."""
    return math.inf if isinstance(m, str) else m


def grokfast(claim, path, root):
    d = _json(path)
    t = pd.DataFrame(d["table"])
    arm = lambda g, b: t[(t["grokfast"] == g) & (t["beta1"] == b)]  # noqa: E731
    base, gf, low, both = (_arm_median(a) for a in (arm("none", 0.9), arm("ema", 0.9), arm("none", 0.5), arm("ema", 0.5)))
    ours = "; ".join(f"{name} {ex.step_text(m)} ({int(a['grokked'].sum())}/{len(a)})" for name, m, a in
                     (("AdamW", base, arm("none", 0.9)), ("Grokfast", gf, arm("ema", 0.9)),
                      ("beta1 0.5", low, arm("none", 0.5)), ("both", both, arm("ema", 0.5))))
    # seed 004: Grokfast ~800 and beta1 0.5 ~700 against AdamW's ~1500 (each about half), and
    # "Grokfast + low beta1 is worse than either alone" (later than each of the two); a median
    # past the budget ("> X") agrees only where its bound settles the comparison
    agrees = (max(_at_most(gf), _at_most(low)) <= 0.75 * _at_least(base)
              and _at_least(both) > max(_at_most(gf), _at_most(low)))
    s = _grokfast_setting(d, len(set(t["seed"])))
    return Result(ours, s, len(t), agrees, "Grokfast and beta1 0.5 each grok within 3/4 of AdamW's median step, "
                                           "and both together later than each alone (median grokking step)")


def _grokfast_setting(d: dict, n: int) -> dict:
    """A Grokfast report's setting without the two swept fields: the members' config where the
    report records it (--mod113 and later), else its base with the script's overrides."""
    s = setting_of(d["config"], seeds=n) if "config" in d else _sweep_setting(d, n)
    for k in ("beta1", "grokfast"):
        s.pop(k, None)
    return s


def _adamw_arm(t: pd.DataFrame) -> pd.DataFrame:
    """The plain AdamW (beta1 0.9, no Grokfast) members of a Grokfast report's table."""
    return t[(t["grokfast"] == "none") & (t["beta1"] == 0.9)]


def transition_candidates(claim, path, root):
    """analyses/seed004_transition.py's report: the grokking step of every setting it measured (the
    seed004 preset as it is, and its candidate changes). The claim is tested on the first setting
    that matches the published one (for 004-transition, "default AdamW": lr 1e-3, betas (0.9,
    0.999)); where none does, on the first setting, and the verdict names the difference."""
    d = _json(path)
    published = _json(root / "figures/claims.json")["settings"][claim["setting"]]
    measured = [(s, setting_of(d["configs"][s["candidate"]], seeds=s["n"])) for s in d["summary"]]
    s, setting = next(((s, st) for s, st in measured if not differences(published, st)), measured[0])
    # the report's median: a seed that never grokked counts as later than all ("> 3000" where they decide it)
    med, pub = s["grokked_step"]["median"], claim["published"]["grokked_step"]
    fmt = ex.step_text

    def steps(x):
        return f"median {fmt(x['grokked_step']['median'])} over {x['n']} seeds, {x['grokked']} grokked"

    others = "; ".join(f"{x['candidate']}: {steps(x)}" for x, _ in measured if x is not s)
    ours = (f"{s['candidate']}: {steps(s)} (steps {', '.join('-' if v is None else f'{v:g}' for v in s['steps'])})"
            + (f". Also measured: {others}" if others else ""))
    return Result(ours, setting, s["n"], isinstance(med, (int, float)) and abs(med - pub) <= 0.25 * pub,
                  "median grokking step (a seed that never grokked counting as later than all) within 25% of "
                  "the published transition")


def seed002_addition(claim, path, root):
    """analyses/seed002_example1.py's report: per weight-decay arm, how many members memorised,
    sat near chance when they did, and grokked; the claim holds when the decayed arm does all
    three in every member and the undecayed arm does not generalise."""
    d = _json(path)
    arms = sorted(d["summary"], key=lambda a: -a["weight_decay"])
    ours = "; ".join(f"wd {a['weight_decay']:g}: {a['n_memorised']}/{a['n']} memorised, "
                     f"{a['n_near_chance_at_memorised']}/{a['n']} near chance then, {a['n_grokked']}/{a['n']} grokked"
                     + (f" (median step {a['grokked_step']['median']:g})" if a["n_grokked"] else "") for a in arms)
    n = min(a["n"] for a in arms)
    s = setting_of(configure(_from_dict(d["config"]), steps=int(d["args"]["steps"])).to_dict(), seeds=n)
    s.pop("weight_decay")
    return Result(ours, s, sum(a["n"] for a in arms), all(a["verdict"] == "holds" for a in arms),
                  "with decay every member memorises near chance, then groks; without, none groks")


def _probed(path):
    d = _json(path)
    return d, pd.DataFrame(d["probed"]), setting_of(d["setting"], seeds=len(d["probed"]))


def hessian(claim, path, root):
    d, p, s = _probed(path)
    falls = (p["hessian_final"] < p["hessian_peak"]).mean()
    rise, pub = p["hessian_rise"].median(), claim["published"]["rise"]
    return Result(f"rise median {rise:.0f}x (IQR {p['hessian_rise'].quantile(.25):.0f}-"
                  f"{p['hessian_rise'].quantile(.75):.0f}), peak at step {p['hessian_peak_step'].median():g} (median), "
                  f"falls after the peak in {falls:.0%}", s, len(p), rise >= 5 and falls >= 0.8,
                  f"the shape: median rise >= 5x and a fall after the peak in >= 80% of seeds (the size is not "
                  f"tested: ours is {rise / pub:.0f}x the published ~{pub}x)")


def agreement(claim, path, root):
    d, p, s = _probed(path)
    rises = (p["agreement_at_memorised"] > p["agreement_first"]).mean()
    return Result(f"higher at memorisation than at step 0 in {rises:.0%} (median {p['agreement_first'].median():.2f} -> "
                  f"{p['agreement_at_memorised'].median():.2f})", s, len(p), rises >= 0.8, "rises in >= 80% of seeds")


def momentum(claim, path, root):
    d, p, s = _probed(path)
    lo, hi = claim["published"]["range"]
    m = p["momentum_cos_plateau"].median()
    return Result(f"median {m:+.2f} on the plateau (min per seed: median {p['momentum_cos_plateau_min'].median():+.2f})",
                  s, len(p), lo - 0.1 <= m <= hi + 0.1, "median plateau cosine within 0.1 of the published range")


def erank(claim, path, root):
    """The drop is the least effective rank within one gap past grokking against the plateau's
    median: tested on the members that ran that whole window (``cycles.erank_window_full``), not
    on those the stop rule ended inside it, whose least rank may still have been falling."""
    d, p, s = _probed(path)
    lo, hi = claim["published"]["range"]
    full = p.loc[erank_window_full(p), "erank_drop"].dropna()
    rule = "median drop within 5 points of the published range, over the members that ran one gap past grokking"
    every = p["erank_drop"].dropna()
    ours = (f"median drop {full.median():.0%} over the {len(full)} of {len(p)} members that ran one gap past "
            f"grokking (>= 30% in {int((full >= lo).sum())}); over all {len(every)} with a drop: "
            f"{every.median():.0%}" if len(full) else
            f"no member ran one gap past grokking; over all {len(every)} with a drop: median {every.median():.0%}")
    if len(full) < 3:
        return Result(ours, s, len(p), None, rule + f" (>= 3 needed, {len(full)} did)")
    m = full.median()
    return Result(ours, s, len(p), lo - 0.05 <= m <= hi + 0.05, rule)


def dips(claim, path, root):
    d, p, s = _probed(path)
    c = d["dips_vs_gap"]
    pl = c.get("agreement_dips_plateau", {})
    rate = c.get("agreement_dips_plateau_per_100_steps", {})
    ours = (f"dips over the run: r = {c['r']:.2f} (n = {c['n']}, p = {c['p']:.2g}); on the plateau: r = {pl.get('r', float('nan')):.2f}; "
            f"plateau dips per 100 steps: r = {rate.get('r', float('nan')):.2f}")
    return Result(ours, s, c["n"], c["r"] >= 0.7 and c["p"] < 0.01,
                  "the run's dip count correlates with the gap at r >= 0.7, p < 0.01")


def hessian_lag(claim, path, root):
    """Seed 004: with beta1 0 generalisation follows the Hessian's decline (its peak) at once,
    with beta1 0.9 ~400 steps later. Two probed populations of one setting but beta1: ``data``
    (beta1 0) and ``against`` (beta1 0.9); the lag is each grokked member's grokking step minus
    its Hessian-peak step (``cycles.series_summary``)."""
    d0, p0, s = _probed(path)
    d9, p9, _ = _probed(root / claim["against"])
    b0, b9 = d0["setting"]["train"]["betas"][0], d9["setting"]["train"]["betas"][0]
    if (b0, b9) != (0.0, 0.9):
        raise ValueError(f"expects a beta1 0 population and a beta1 0.9 one, got beta1 {b0} and {b9}")
    lag0, lag9 = (pd.to_numeric(p["hessian_lag"], errors="coerce").dropna() for p in (p0, p9))
    pub = claim["published"]["lag"]
    rule = (f"the median lag at beta1 0.9 minus that at beta1 0 within 50% of the published ~{pub} steps "
            f"(grokked members, >= 3 in each arm)")
    arm = lambda lag, p, b: (f"median {lag.median():.0f} at beta1 {b:g} ({len(lag)} of {len(p)} grokked)"  # noqa: E731
                             if len(lag) else f"none grokked at beta1 {b:g} (of {len(p)})")
    s = s | {"beta1": "0, 0.9", "seeds": min(len(p0), len(p9))}
    if len(lag0) < 3 or len(lag9) < 3:
        return Result(f"lag (grokked - Hessian peak step): {arm(lag9, p9, b9)}; {arm(lag0, p0, b0)}", s,
                      len(p0) + len(p9), None, rule + f" (too few grokked: {len(lag9)} and {len(lag0)})")
    diff = lag9.median() - lag0.median()
    return Result(f"lag (grokked - Hessian peak step): {arm(lag9, p9, b9)}; {arm(lag0, p0, b0)}; difference {diff:+.0f}",
                  s, len(p0) + len(p9), abs(diff - pub) <= 0.5 * pub, rule)


def limit_cycle(claim, path, root):
    d = _json(path)
    pub = claim["published"]
    row = next(r for r in d["rows"] if r["run"] == f"wd {pub['weight_decay']:g}")
    rep = _json(root / d["grokked_from"])
    lc = next(r for r in rep["limit_cycle"] if r["weight_decay"] == pub["weight_decay"])
    crashes = row["crashes"]
    low = f" to {min(c['min_test_acc'] for c in crashes):.2f} at steps {', '.join(str(c['step']) for c in crashes)}" if crashes else ""
    period = "none found" if lc["test_acc_period"] is None else f"{lc['test_acc_period']:g} steps"
    ours = (f"grokked at {row['grokked_step']}, then {len(crashes) or 'no'} crash{'es' if len(crashes) != 1 else ''}{low} "
            f"by step {row['last_step']}; accuracy period {period}")
    if "period" in pub:
        ok = lc["test_acc_period"] is not None and abs(lc["test_acc_period"] - pub["period"]) <= 0.5 * pub["period"]
        rule = "an accuracy period within 50% of the published one"
    elif "crashes" in pub:
        ok, rule = len(crashes) == 0, "no crash after grokking"
    else:
        ok = any(c["min_test_acc"] <= pub["collapse_to"] + 0.15 for c in crashes)
        rule = "a crash to within 0.15 of the published accuracy"
    s = setting_of(rep["setting"], seeds=1, weight_decay=pub["weight_decay"], steps=lc["steps"])
    return Result(ours, s, 1, ok, rule)


def limit_cycle_own(claim, path, root):
    """analyses/limit_cycle_seed004.py's members at one (weight decay, beta1): seed 004's
    statement about what follows grokking, tested on every seed that grokked."""
    d, pub = _json(path), claim["published"]
    rows = [r for r in d["rows"] if (r["weight_decay"], r["beta1"]) == (pub["weight_decay"], pub["beta1"])]
    grokked = [r for r in rows if r["grokked_step"] is not None]
    per_seed = "; ".join(
        f"seed {r['seed']}: " + ("not grokked" if r["grokked_step"] is None else
                                 f"grokked {r['grokked_step']}, {len(r['crashes'])} crash(es)"
                                 + ("" if r["lowest_after_grok"] is None else f" (lowest {r['lowest_after_grok']:.2f})")
                                 + f", period {r['test_acc_period'] or 'none'}") for r in rows)
    if "period" in pub:
        periods = [r["test_acc_period"] for r in grokked if r["test_acc_period"] is not None]
        ok = bool(periods) and abs(_med(periods) - pub["period"]) <= 0.5 * pub["period"]
        rule = "the median accuracy period within 50% of the published one"
    elif "crashes" in pub:
        ok, rule = bool(grokked) and all(not r["crashes"] for r in grokked), "no crash after grokking in any seed"
    else:
        ok = any(r["lowest_after_grok"] is not None and r["lowest_after_grok"] <= pub["collapse_to"] + 0.15
                 for r in grokked)
        rule = "a crash to within 0.15 of the published accuracy in some seed"
    s = setting_of(d["config"], seeds=len(rows), weight_decay=pub["weight_decay"], beta1=pub["beta1"])
    if not grokked:  # a statement about what follows grokking: no seed gives it anything to test
        return Result(per_seed, s, len(rows), None, f"{rule} (no seed grokked)")
    return Result(per_seed, s, len(rows), ok, rule)


def _recipient_state(rows: list[dict]) -> str:
    """The recipients' train accuracy and last-layer neurons clustered on one frequency (their Fourier
    features), where the study recorded them."""
    if not rows or not all("recipient_train_acc" in r and "recipient_clustered" in r for r in rows):
        return ""
    tr, cl = [r["recipient_train_acc"] for r in rows], [r["recipient_clustered"] for r in rows]
    return f", train acc {min(tr):.2f}-{max(tr):.2f}, {min(cl)}-{max(cl)} neurons clustered on one frequency"


def transplant(claim, path, root):
    """The Fourier arm against the untouched recipient: restarted through the arms' own pipeline
    where the JSON has that arm (so a restart's own effect cancels), else the base run itself."""
    d = _json(path)
    rows = [r for r in d["rows"] if r.get("control_grokking_step") is not None and r.get("fourier_grokking_step") is not None]
    restarted = bool(rows) and all("restart_grokking_step" in r for r in rows)
    ctrl = "restart" if restarted else "control"
    rows = [r for r in rows if r[f"{ctrl}_grokking_step"] is not None]
    f_c = [r["fourier_grokking_step"] - r[f"{ctrl}_grokking_step"] for r in rows]
    f_n = [r["fourier_grokking_step"] - r["non_fourier_grokking_step"] for r in rows if r.get("non_fourier_grokking_step")]
    cfg = ex.apply_overrides(configure(d["preset"]), d.get("set") or [])
    s = setting_of(cfg.to_dict(), seeds=len(d["rows"]))
    acc = [r["recipient_test_acc"] for r in rows]
    chance = 1 / cfg.task.p  # at chance: within twice the accuracy of a uniform guess
    state = "at chance" if acc and max(acc) <= 2 * chance else "not at chance"
    restart = ([r["restart_grokking_step"] - r["control_grokking_step"] for r in rows] if restarted else [])
    ours = (f"{len(rows)} plateau seeds: Fourier minus untouched{' (restarted like the arms)' if restarted else ''} "
            f"median {_med(f_c):+g} steps (sooner in {sum(x < 0 for x in f_c)}); Fourier minus as many non-Fourier "
            f"neurons median {_med(f_n):+g}; "
            + (f"the restart alone against the base run median {_med(restart):+g}; " if restarted else "") +
            f"recipient test acc {min(acc, default=float('nan')):.3f}-{max(acc, default=float('nan')):.3f} "
            f"({state}: chance is {chance:.3f})" + _recipient_state(rows))
    return Result(ours, s, len(rows), abs(_med(f_c)) <= 10,
                  f"median Fourier-arm minus untouched{' (restarted)' if restarted else ''} grokking step within one "
                  f"10-step evaluation of 0")


def embedding_transfer(claim, path, root):
    d = _json(path)
    t = pd.DataFrame(d["rows"]).assign(delay=lambda x: x["grokking_step"] - x["memorisation_step"])
    ctrl, src = t[t["arm"] == "control"]["delay"].median(), t[t["arm"] == "grokked source"]["delay"].median()
    a = d["args"]
    s = {"task": "a+b", "p": int(a["p"]), "frac": float(a["frac"]), "steps": int(a["steps"]), "seeds": int(t["seed"].nunique())}
    return Result(f"delay after memorising: control median {ctrl:g}, grokked-source embeddings {src:g}, "
                  f"early-source {t[t['arm'] == 'early source']['delay'].median():g}", s, int(t['seed'].nunique()),
                  src <= 0.25 * ctrl, "grokked-source median delay <= 1/4 of the control's")


EXTRACT = {f.__name__: f for f in (freezing, weight_decay, single_run, parity, nanda_keys, nanda_embed, nanda_neurons,
                                   nanda_phases, nanda_loss, latent_detour, latent_ln, latent_parity, beta1_zero,
                                   beta1_flat, beta1_high, wd_rate, wd_no_memorise, grokfast, hessian, agreement,
                                   momentum, erank, dips, limit_cycle, transplant, embedding_transfer,
                                   transition_candidates,
                                   seed002_addition, limit_cycle_own, hessian_lag)}


# --- the ledger --------------------------------------------------------------------------------


def _published_text(claim) -> str:
    p = claim["published"]
    return ", ".join(f"{k} {v}" for k, v in p.items() if k not in {"intervention"}) or "qualitative"


def ledger(root: Path = ROOT) -> list[dict]:
    """One row per claim of figures/claims.json, computed from the data files under ``root``."""
    spec = _json(root / "figures/claims.json")
    rows = []
    for c in spec["claims"]:
        pub_setting = spec["settings"][c["setting"]]
        path = root / c["data"]
        try:
            res = EXTRACT[c["extract"]](c, path, root) if path.exists() else None
        except (KeyError, ValueError, TypeError, StopIteration) as e:  # a data file in a layout the extractor does not know
            raise ValueError(f"{c['data']} (claim {c['id']}): cannot read {type(e).__name__} {e}; adapt "
                             f"claims_ledger.{c['extract']} to the file") from None
        v, diff = verdict(pub_setting, res, _published_text(c))
        rows.append({"id": c["id"], "source": c["source"], "claim": c["claim"], "published": c["published"],
                     "published_setting": pub_setting, "ours": None if res is None else res.ours,
                     "our_setting": None if res is None else res.setting, "n": None if res is None else res.n,
                     "agrees_at_our_setting": None if res is None else res.agrees,
                     "test": None if res is None else res.rule, "verdict": v, "setting_differences": diff,
                     "data": c["data"], **({} if res is None or not res.extra else {"detail": res.extra})})
    return rows


def _cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def ledger_markdown(rows: list[dict]) -> str:
    head = ["# Claims ledger", "",
            "Written by `python analyses/claims_ledger.py` from `figures/claims.json` (the published claims) and the "
            "data file named in each row; `tests/test_claims_ledger.py` regenerates it and fails on any difference. "
            "Verdict rule (`mechgrok.claims`): no data file -> not run; a field the source states differs from "
            "the setting recorded in our data -> not comparable (setting: ours vs published); otherwise the row's "
            "test decides reproduced / not reproduced. A surrogate can show a mechanism works, it cannot refute a "
            "claim: what it showed is in \"at our setting\" (the test applied to our numbers).", "",
            f"{len(rows)} claims: " + ", ".join(f"{n} {k}" for k, n in _counts(rows).items()) + ".", "",
            "| id | source | claim as published | published setting | ours | our setting (the fields the source states; all in CLAIMS.json) | n | at our setting | verdict | data |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    body = []
    for r in rows:
        at = {True: "agrees", False: "differs", None: "-"}[r["agrees_at_our_setting"]]
        if r["test"]:
            at += f" ({r['test']})"
        body.append("| " + " | ".join(_cell(x) for x in (
            r["id"], r["source"], f"{r['claim']} ({_published_text({'published': r['published']})})",
            describe(r["published_setting"]) or "not stated", r["ours"] or "-",
            _ours_shown(r), r["n"] if r["n"] is not None else "-", at,
            r["verdict"], f"`{r['data']}`")) + " |")
    return "\n".join(head + body) + "\n"


def _ours_shown(r: dict) -> str:
    """Our setting in the fields the source states, plus steps, seeds and where a stated field
    was matched by another measure (``placed_at``; CLAIMS.json has all)."""
    if not r["our_setting"]:
        return "-"
    keys = [*r["published_setting"], "steps", "seeds", "placed_at"]
    return describe({k: v for k, v in r["our_setting"].items() if k in keys})


def _counts(rows) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        k = r["verdict"].split(" (")[0]
        out[k] = out.get(k, 0) + 1
    return out


def what_reproduces(rows: list[dict]) -> str:
    """README's summary: per verdict, the claims (ids link into the ledger)."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["verdict"].split(" (")[0], []).append(r)
    lines = ["## What reproduces", "",
             f"From [figures/CLAIMS.md](figures/CLAIMS.md), generated from the data ({len(rows)} claims of the five "
             "source documents and the papers they cite): " +
             ", ".join(f"**{len(v)} {k}**" for k, v in by.items()) + ". \"Not comparable\" means our run's setting "
             "differs from the published one in a field the source states (a smaller p, fewer steps, another lr): such a "
             "run shows whether a mechanism appears at our scale, not whether the claim holds.", ""]
    for k in ("reproduced", "not reproduced", "not comparable", "not run", "no test"):
        if k in by:
            at = {True: "agrees at our setting", False: "differs at our setting", None: "no test"}
            items = [f"{r['id']}" + (f" ({at[r['agrees_at_our_setting']]})" if k == "not comparable" else "")
                     for r in by[k]]
            lines.append(f"- {k}: " + ", ".join(items))
    return "\n".join(lines)


# --- generated blocks of README.md and figures/README.md ----------------------------------------


def _table(header: list[str], rows: list[list]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] +
                     ["| " + " | ".join(_cell(x) for x in r) + " |" for r in rows])


def _freezing_cost(d: dict) -> str:
    """What a freezing report's training took, from the seconds it recorded (wall clock)."""
    secs = [r["seconds"] for r in d["results"] if r.get("seconds") is not None]
    base = d["meta"].get("base_wall_seconds", d["meta"].get("base_seconds"))
    if not secs:
        return ""
    where = f" on {d['hardware']}" if d.get("hardware") else ""
    return (f" Training time (wall clock{where}):" + (f" the base run {base / 60:.1f} min;" if base else "")
            + f" the {len(secs)} continuations {sum(secs) / 3600:.1f} h in all, {statistics.median(secs) / 60:.1f} min "
            f"each (median).")


def freezing_block(root: Path, stem: str = "freezing_phases") -> str:
    """figures/README's freezing table, the base run's milestones and where the checkpoints sit
    on its plateau (against seed 000's), and which interventions fall in seed 000's category.
    A study still running (``meta.continuations``) has cells "not run yet"."""
    from_script = _script("freezing_phases").PUBLISHED
    path = root / f"figures/{stem}.json"
    if not path.exists():
        return (f"Not run yet: `python analyses/freezing_phases.py --full --compile` (figures/{stem}.json; sized in "
                f"\"Runs at the seeds' own settings\" below).")
    d = _json(path)
    meta = d["meta"]
    s1, s2 = meta["from_steps"]
    res = {(r["name"], r["from_step"]): r for r in d["results"]}
    names = list(dict.fromkeys(r["name"] for r in d["results"]))
    names_both = [n for n in names if (n, s1) in res and (n, s2) in res]
    mem, grok = meta["base_memorisation_step"], meta["base_grokking_step"]
    pub_mem, pub_grok = _json(root / "figures/claims.json")["facts"]["seed000_plateau"]
    pub_steps = _json(root / "figures/claims.json")["settings"]["seed000"]["checkpoints"]
    frac = lambda s, a, b: (s - a) / (b - a)  # noqa: E731
    at = meta["base_test_acc_at_checkpoints"]

    def cell(r):
        if r is None:
            return "not run yet"
        g = f"grok {r['grokking_step']}" if r["grokked"] else "no grok"
        return f"{_pct(r['final_test_acc'])} (max {r['max_test_acc']:.0%}, {g})"

    acc = {n: (res[(n, s1)]["final_test_acc"], res[(n, s2)]["final_test_acc"]) for n in names_both}
    some = {n: res.get((n, s1)) or res[(n, s2)] for n in names}
    rows = [[n, f"{some[n]['trainable_params']:,} / {some[n]['total_params']:,}", cell(res.get((n, s1))),
             cell(res.get((n, s2))), _pct(from_script[n][0]), _pct(from_script[n][1]),
             f"{_category(acc[n], BLOCKED)} / {_category(acc[n], GROKKED)}" if n in acc else "-",
             _category(from_script[n], BLOCKED)] for n in names]
    same = [n for n in names_both if _category(acc[n], BLOCKED) == _category(from_script[n], BLOCKED)]
    other = [f"{n} ({_category(acc[n], BLOCKED)}; published {_category(from_script[n], BLOCKED)})" for n in names_both
             if n not in same]
    ours_f = [frac(s, mem, grok) for s in (s1, s2)] if None not in (mem, grok) else None
    pub_f = [frac(s, pub_mem, pub_grok) for s in pub_steps]
    where = ("The base run has no plateau to place them on." if ours_f is None else
             f"They sit at {ours_f[0]:.2f} and {ours_f[1]:.2f} of its plateau (memorised to grokked); seed 000's "
             f"{pub_steps[0]} and {pub_steps[1]} sit at {pub_f[0]:.2f} and {pub_f[1]:.2f} of its ~{pub_mem}-{pub_grok} "
             f"(grokking at ~15k-19k: the middle). So our checkpoints are " +
             ("at about the same places on the plateau as the source's (within 0.05)."
              if max(abs(a - b) for a, b in zip(ours_f, pub_f)) <= 0.05 else
              "earlier on the plateau than the source's." if all(a < b for a, b in zip(ours_f, pub_f)) else
              "later on the plateau than the source's." if all(a > b for a, b in zip(ours_f, pub_f)) else
              "placed differently on the plateau from the source's."))
    rule = f" Chosen as {meta['checkpoint_rule']}." if meta.get("checkpoint_rule", "the steps given") != "the steps given" else ""
    cont = meta.get("continuations")
    left = (f" {cont['done']} of {cont['asked']} continuations are done; the rest read \"not run yet\" (re-run the command "
            f"to go on)." if cont and cont["done"] < cont["asked"] else "")
    low = meta.get("base_plateau_low")
    collapse = (f" Between memorising and grokking its train accuracy fell to {_pct(low['train_acc'])} (step {low['step']}): "
                f"the plateau ended in a collapse of the fit, {grok - low['step']} steps before it grokked."
                if low and low["train_acc"] < BLOCKED else "")
    planned, ran = meta["config"]["train"]["steps"], meta.get("base_steps")
    stopped = (f" It was set to {planned} steps and stopped by hand at {ran}, after grokking (`--base-as-is`)."
               if ran is not None and ran < planned else "")
    head = (f"Base run: memorised (train acc > 0.99) at step {mem}, grokked (test acc > 0.9) at {grok}. The checkpoints are "
            f"{s1} and {s2} (test accuracy {_pct(at[str(s1)])} and {_pct(at[str(s2)])}).{rule} {where}{collapse}{stopped}{left}"
            f"{_freezing_cost(d)}")
    cats = ("Categories: \"always blocks\" (below the threshold from both checkpoints), \"phase-dependent\" (below from the "
            "first, at or above from the second), \"never blocks\" (at or above from both), by final test accuracy. Seed "
            "000 splits its categories at ~0.5 (its 32% is \"blocked\", its 67% \"never blocks\"); our grokked threshold is 0.9; "
            "both are given.")
    tail = (f"In seed 000's category at its 0.5 split: {', '.join(same) or 'none'}. In another: {'; '.join(other) or 'none'}.")
    return "\n\n".join([head, _table(["intervention", "trainable / total", f"ours from {s1}", f"ours from {s2}",
                                         "published from 7k", "published from 11k", "ours: category at 0.5 / 0.9",
                                         "published: category (0.5)"], rows), cats, tail])


def transplant_block(root: Path) -> str:
    d = _json(root / "figures/fourier_transplant.json")
    end = int(d["args"]["recipient_step"]) + int(d["args"]["steps"])
    done = [r for r in d["rows"] if "control_grokking_step" in r]
    left = [r["seed"] for r in d["rows"] if "control_grokking_step" not in r]
    rows = [[r["seed"], f"{r['base_memorisation_step']} / {r['base_grokking_step']}", r["n_neurons"],
             f"{_pct(r['after_transplant_test_acc'])} (recipient before: {_pct(r['recipient_test_acc'])})",
             r["control_grokking_step"] or f"not by {end}", r["transplant_grokking_step"] or f"not by {end}"] for r in done]
    ctrl = [r["control_grokking_step"] for r in done]
    tr = [r["transplant_grokking_step"] for r in done]
    sooner = sum(t is not None and (c is None or t < c) for c, t in zip(ctrl, tr))
    show = lambda xs: ", ".join(str(x) if x is not None else f">{end}" for x in xs)  # noqa: E731
    acc = [r["recipient_test_acc"] for r in done]
    moved = [r["n_neurons"] for r in done]
    return (_table(["seed", "base run: memorised / grokked", "clustered neurons moved", "test acc right after transplant",
                    "grokking step: control", "grokking step: transplant"], rows) +
            f"\n\nGrokking steps: control [{show(ctrl)}], transplant [{show(tr)}] (median "
            f"{_med(tr):g}); the transplant grokked sooner in {sooner} of {len(done)} seeds. Recipient test accuracy "
            f"before the transplant {_pct(min(acc))}-{_pct(max(acc))}; neurons moved {min(moved)}-{max(moved)}."
            + (f" Seeds {left}: the base run did not grok, left out." if left else ""))


def _chance_trajectories(d: dict) -> str:
    """Per seed of an at-chance transplant study, from its checkpoints up to memorisation: where test
    accuracy first leaves chance and where the first last-layer neuron clusters on one frequency."""
    lim, out, gaps, same = d.get("recipient_max_test_acc"), [], set(), 0
    for r in (r for r in d["rows"] if r.get("trajectory")):
        tr = r["trajectory"]
        gaps |= {b["step"] - a["step"] for a, b in zip(tr, tr[1:])}
        up = next((t["step"] for t in tr if t["test_acc"] > lim), None)
        cl = next((t for t in tr if t["clustered"] > 0), None)
        same += up is not None and cl is not None and up == cl["step"]
        out.append(f"seed {r['seed']}: test accuracy first above {lim:g} at step {up if up is not None else 'none'}, "
                   f"first neuron clustered at step " + (f"{cl['step']} ({cl['clustered']} neuron{'s' * (cl['clustered'] != 1)})" if cl else "none"))
    if not out:
        return ""
    every = "/".join(str(g) for g in sorted(gaps))
    return (f"Checkpoints up to memorisation (every {every} steps): " + "; ".join(out) + f". The two are the same "
            f"checkpoint in {same} of {len(out)} seeds.")


def transplant_dynamics_block(root: Path, name: str = "fourier_transplant_dynamics") -> str:
    """figures/README's transplant on a preset (``name``: its JSON under figures/):
    fourier_transplant.py's own summary of its JSON, the plateau seeds, and the evidence that
    the recipients are (not) at chance."""
    if not (root / f"figures/{name}.json").exists():
        return f"Not run yet: `figures/{name}.json` does not exist."
    d = _json(root / f"figures/{name}.json")
    lines = _script("fourier_transplant").plateau_summary(d)
    rows = [r for r in d["rows"] if "control_grokking_step" in r]
    ev = [r["evidence"] for r in rows if r.get("evidence")]
    rng = lambda xs, f="{:.2f}": f"{f.format(min(xs))}-{f.format(max(xs))}"  # noqa: E731
    p = configure(d["preset"]).task.p
    lines += ["", f"Plateau seeds: {[r['seed'] for r in rows]}. At the recipient step, test accuracy "
                  f"{rng([r['recipient_test_acc'] for r in rows], '{:.3f}')} (chance 1/{p} = {1 / p:.3f}) and test loss "
                  f"{rng([r['recipient_test_loss'] for r in rows])} (chance ln {p} = {math.log(p):.2f})"
                  + (f", train accuracy {rng([r['recipient_train_acc'] for r in rows])}" if rows else "") + "."]
    if ev:
        g = {k: rng([e[k]["embedding_gini"] for e in ev]) for k in ("init", "recipient", "donor")}
        c = {k: rng([e[k]["clustered"] for e in ev], "{:d}") for k in ("init", "recipient", "donor")}
        lines[-1] += (f" Embedding-spectrum Gini (k >= 1): {g['init']} at init, {g['recipient']} at the recipient, "
                      f"{g['donor']} at the donor; last-layer neurons clustered on one frequency: {c['init']}, "
                      f"{c['recipient']}, {c['donor']}.")
    traj = _chance_trajectories(d)
    if traj:
        lines += ["", traj]
    left = [f"{r['seed']} ({r['skipped']})" for r in d["rows"] if r.get("skipped")]
    if left:
        lines[-1] += f" Seeds left out: {'; '.join(left)}."
    return "\n".join(lines)


def embedding_block(root: Path) -> str:
    t = pd.DataFrame(_json(root / "figures/embedding_transfer.json")["rows"])
    arms = ["control", "grokked source", "early source"]
    rows = []
    for s, g in t.groupby("seed"):
        a = g.set_index("arm")
        rows.append([s] + [f"{a.loc[x, 'grokking_step']} / {a.loc[x, 'memorisation_step']}" for x in arms])
    med = {x: _med(t[t["arm"] == x]["grokking_step"].tolist()) for x in arms}
    return _table(["seed"] + [f"{x}: grok / memorise" for x in arms], rows) + "\n\nMedian grokking step: " + \
        ", ".join(f"{x} {med[x]:g}" for x in arms) + "."


def momentum_block(root: Path) -> str:
    d = _json(root / "figures/momentum_sweep.json")
    b = [[f"{r['beta1']:g}", r["n"], f"{r['n_grokked']}/{r['n']}", f"{r['delay_median']:g} ({r['delay_q25']:g}-{r['delay_q75']:g})"]
         for r in d["beta1"]]
    w = [[f"{r['weight_decay']:g}", r["n"], f"{r['n_grokked']}/{r['n']}",
          "-" if not r["n_delay"] else f"{r['delay_median']:g} ({r['delay_q25']:g}-{r['delay_q75']:g})",
          r["n_grokked_before_memorising"], f"{r['final_test_acc_mean']:.2f}"] for r in d["wd"]]
    return (_table(["beta1", "seeds", "grokked", "delay median (IQR)"], b) + "\n\n" +
            _table(["weight decay (beta1 0)", "seeds", "grokked", "delay median (IQR)", "grokked before memorising",
                    "final test acc (mean)"], w))


def grokfast_block(root: Path) -> str:
    t = pd.DataFrame(_json(root / "figures/grokfast_vs_momentum.json")["table"])
    rows = []
    for (g, b), a in t.groupby(["grokfast", "beta1"], sort=False):
        rows.append([f"{'Grokfast EMA + ' if g != 'none' else ''}AdamW beta1 {b:g}", ex.step_text(_arm_median(a)),
                     f"{int(a['grokked'].sum())}/{len(a)}", f"{a['final_test_acc'].min():.2f}-{a['final_test_acc'].max():.2f}"])
    return _table(["arm", "median grokking step (not grokked: later than all)", "grokked", "final test acc (range)"], rows)


def parity_block(root: Path) -> str:
    rows = _json(root / "figures/parity_two_basins.json")["rows"]
    by = {}
    for r in rows:
        by.setdefault(r["seed"], {})[r["weight decay"] > 0] = r
    fmt = lambda r: (f"{r['memorised at']} / {r['grokked at'] if r['grokked at'] is not None else 'never'} / "  # noqa: E731
                     f"{r['final test acc']:.2f} / {r['norm at start']:.1f} -> {r['norm at end']:.1f}")
    table = _table(["seed", "wd 1: memorised / grokked / final test acc / norm start -> end", "wd 0: same"],
                   [[s, fmt(v[True]), fmt(v[False])] for s, v in sorted(by.items())])
    again = root / "figures/backing/parity_solo_vs_ensemble.json"
    if not again.exists():
        return table
    a = _json(again)
    arms = "; ".join(f"{k}: memorised {v['memorised_step']}, grokked {v['grokked_step']}"
                     + (", bit-identical to solo" if v["vs solo"]["identical"] else
                        f", first step off solo by > 1e-4: {v['vs solo']['first_step_over_rtol']}") for k, v in a["rows"].items())
    note = (f"\n\nThe wd 1 / seed 0 member re-trained with today's code (`figures/backing/parity_solo_vs_ensemble.json`): "
            f"{arms}.")
    vmap = root / "figures/backing/parity_vmap.json"
    if vmap.exists():
        v = _json(vmap)
        r = v["rows"][v["member"]]
        note += (f" The same four members as one ensemble with vmap-ed gradients, the CPU path when the table above was "
                 f"made (`figures/backing/parity_vmap.json`): memorised {r['memorised_step']}, grokked {r['grokked_step']}; "
                 f"its losses leave the solo run's by more than 1e-4 (relative) first at step "
                 f"{v['vs solo']['first_step_over_rtol']}. The difference starts in the last bits and grows through "
                 f"memorisation (relative train-loss difference by step: " + ", ".join(
                     f"{k}: {x:.1e}" for k, x in v["train_loss_rel_diff_first_steps"].items() if int(k) > 0) +
                 "): vmap's rounding (ensemble.py), amplified, not a different computation. Today CPU ensembles "
                 "compute member by member and are bit-identical to solo runs; vmap is still the GPU path.")
    else:
        note += (" The table above was trained when CPU ensembles vmap-ed their gradients (2026-11-24); whether that "
                 "explains its different grokking step is not yet backed by a file (`python analyses/backing_numbers.py "
                 "parity_vmap`).")
    return table + note


def ablation_block(root: Path) -> str:
    path = root / "figures/backing/key_frequency_ablation.json"
    if not path.exists():
        return "Key-frequency ablation numbers: unbacked (figures/backing/key_frequency_ablation.json not made yet)."
    out = []
    for r in _json(path)["rows"]:
        alone = [x for x in r["each_removed_alone"] if x["is_key"]]
        other = [x["test_loss"] for x in r["each_removed_alone"] if not x["is_key"]]
        out.append(f"At the {r['where']} (step {r['step']}, key frequencies {r['freqs']}): baseline test loss "
                   f"{r['baseline']['test_loss']:.3g}; removing them gives {r['remove']['test_loss']:.3g} (test accuracy "
                   f"{r['remove']['test_acc']:.0%}); keeping only them (plus the mean) {r['keep']['test_loss']:.3g}; "
                   f"removing one alone: " + ", ".join(f"{x['freq']}: {x['test_loss']:.3g}" for x in alone) +
                   (f"; any other frequency alone: {min(other):.2g}-{max(other):.2g}" if other else "") + ".")
    return " ".join(out) + " (`figures/backing/key_frequency_ablation.json`, `python analyses/backing_numbers.py key_frequency_ablation`)"


def demo_run_block(root: Path) -> str:
    path = root / "figures/backing/demo_ablation.json"
    if not path.exists():
        return "The demo run's milestones: unbacked (figures/backing/demo_ablation.json not made yet)."
    d = _json(path)
    t, base = d["transitions"], d["rows"][0]["baseline"]
    return (f"Re-made by `python analyses/backing_numbers.py demo_ablation` (the same preset and seeds): memorised "
            f"(train acc > 0.99) at step {t['memorised_step']}, grokked (test acc > 0.9) at step {t['grokked_step']}; "
            f"at step {t['last_step']} test accuracy {base['test_acc']:.3f}, train loss {base['train_loss']:.2g}, test loss "
            f"{base['test_loss']:.3g} (`figures/backing/demo_ablation.json`).")


def demo_ablation_block(root: Path) -> str:
    path = root / "figures/backing/demo_ablation.json"
    if not path.exists():
        return "  the embedding (numbers on the demo run: unbacked, figures/backing/demo_ablation.json not made yet)."
    r = _json(path)["rows"][0]
    return (f"  the demo run (step {r['step']}), removing its {len(r['freqs'])} key frequencies {r['freqs']} at the "
            f"embedding takes test loss from {r['baseline']['test_loss']:.3g} to {r['remove']['test_loss']:.3g}; keeping "
            f"only them gives {r['keep']['test_loss']:.3g} (`figures/backing/demo_ablation.json`).")


def plateau_transplant_block(root: Path) -> str:
    path = root / "figures/backing/plateau_transplant.json"
    if not path.exists():
        return "Transplant into a real plateau: unbacked (figures/backing/plateau_transplant.json not made yet)."
    d = _json(path)
    clusters = ", ".join(f"{k}" for k in sorted(d["donor_clusters"], key=int))
    return (f"On the freezing base run (memorised {d['base']['memorised_step']}, grokked {d['base']['grokked_step']}), "
            f"layer {d['layer']}'s {d['n_neurons']} neurons clustered on one frequency at step {d['donor_step']} "
            f"(dlog frequencies {clusters}) copied into step {d['recipient_step']} (test accuracy "
            f"{_pct(d['recipient_test_acc'])}): right after, train accuracy {_pct(d['after_transplant']['train_acc'])}, "
            f"test {_pct(d['after_transplant']['test_acc'])}; grokking step transplant {d['transplant']['grokking_step']}, "
            f"control {d['control']['grokking_step']} (evaluated every 50 steps; one seed). "
            f"(`figures/backing/plateau_transplant.json`, `python analyses/backing_numbers.py plateau_transplant`)")


def _seed004_measured(root: Path) -> str | None:
    """README's line on the seed004 preset: the candidate of analyses/seed004_transition.py's report
    that was trained with the preset's config as it is now (None: no candidate was)."""
    path = root / "figures/dynamics/seed004/transition.json"
    if not path.exists():
        return None
    d = _json(path)
    name = _script("seed004_transition").preset_candidate(d["configs"])
    s = next((x for x in d["summary"] if x["candidate"] == name), None)
    if s is None:
        return None
    each = ", ".join(f"seed {r['seed']}: {r['grokked_step'] if r['grokked_step'] is not None else 'not by ' + str(d['steps'])}"
                     for r in d["rows"] if r["candidate"] == name)
    acc = s["test_acc_when_memorised"]["median"]
    med = s["grokked_step"]["median"]  # a seed that never grokked counts as later than all ("> X")
    return (f"- `seed004`: groks (test acc > 0.9) at a median step {ex.step_text(med)} over "
            f"{s['n']} seeds, {s['grokked']} of them grokked ({each}), memorises at a median {s['memorised_step']['median']:g}"
            + ("" if acc is None else f" with test accuracy {acc:.3f} there (chance 0.009)")
            + f" (`{name}` in `figures/dynamics/seed004/transition.json`; seed 004's transition: ~1500).")


def presets_block(root: Path) -> str:
    """README's measured notes on the dynamics, seed004, parity and sparse_parity presets."""
    out = []
    dyn = _json(root / "figures/dynamics/preset/optimizer_dynamics.json")
    s0 = next(r for r in dyn["probed"] if r["seed"] == 0)
    pop = _json(root / "figures/fourier_transplant_dynamics.json")["rows"]
    q = lambda xs: statistics.quantiles(xs, n=4, method="inclusive")  # noqa: E731
    delays = [r["base_delay"] for r in pop]
    out.append(f"- `dynamics`: seed 0 memorises (train acc > 0.99) at step {s0['memorised_step']} and groks (test acc > 0.9) "
               f"at {s0['grokked_step']} (`figures/dynamics/preset/optimizer_dynamics.json`); over {len(pop)} seeds, median "
               f"{_med([r['base_memorisation_step'] for r in pop]):g} / {_med([r['base_grokking_step'] for r in pop]):g}, delay "
               f"{_med(delays):g} (IQR {q(delays)[0]:g}-{q(delays)[2]:g}) (`figures/fourier_transplant_dynamics.json`).")
    gf = root / "figures/grokfast_mod113.json"
    if (line := _seed004_measured(root)) is not None:
        out.append(line)
    elif gf.exists():
        t = pd.DataFrame(_json(gf)["table"])
        a = _adamw_arm(t)
        each = ", ".join(f"seed {int(r.seed)}: {int(r.grokked_step) if r.grokked else 'not'}"
                         for r in a.sort_values("seed").itertuples())
        out.append(f"- `seed004`: groks (test acc > 0.9) at a median step {ex.step_text(_arm_median(a))} over "
                   f"{len(a)} seeds, {int(a['grokked'].sum())} grokked ({each}), memorises at a median {_med(a['memorised_step'].tolist()):g} (the "
                   f"AdamW arm of `figures/grokfast_mod113.json`; seed 004's transition: ~1500).")
    else:
        out.append("- `seed004`: its grokking step is not measured yet (figures/grokfast_mod113.json not made yet).")
    par = root / "figures/backing/parity_solo_vs_ensemble.json"
    if par.exists():
        rows = _json(par)["rows"]
        solo = rows["solo, the parity preset (seed 0)"]
        out.append(f"- `parity`: seed 0, trained solo, memorises at {solo['memorised_step']} and generalises at "
                   f"{solo['grokked_step']}; " + "; ".join(f"{k}: {v['memorised_step']} / {v['grokked_step']}"
                                                            for k, v in rows.items() if k != "solo, the parity preset (seed 0)")
                   + " (`figures/backing/parity_solo_vs_ensemble.json`).")
    else:
        out.append("- `parity`: seed 0's milestones: unbacked (figures/backing/parity_solo_vs_ensemble.json not made yet).")
    out.append("- `sparse_parity`: seeds 0 and 1 sat on a plateau near chance, then train and test accuracy rose to 1.0 "
               "together; with fewer training strings it memorised first and did not generalise in the steps tried. "
               "Those runs were not kept: unbacked, so no steps are given.")
    return "\n".join(out)


def _kept_setting(spec: dict) -> str:
    """What a kept sweep varied and fixed, in the words of its command's --set flags."""
    parts = [f"{k} {v}" for k, v in spec.get("fixed", {}).items() if k != "device"]
    parts += [f"probe {spec['probe']}"] if spec.get("probe") else []
    arms = [", ".join(f"{k} {v}" for k, v in s.items()) for s in spec.get("settings", [])]
    return "; ".join(parts + ([f"arms: {' / '.join(arms)}"] if arms else [])) or "the preset"


def kept_block(root: Path) -> str:
    """One row per committed ``kept/`` population: how many of its planned members finished and were
    kept, what they did and what their training cost, all read from the kept files (``sweep.json``
    plans the members; ``finished.jsonl`` records each kept one with its wall seconds)."""
    from mechgrok.population import read_manifest

    rows = []
    for spec_file in sorted((root / "figures").rglob("kept/**/sweep.json")):
        spec, d = _json(spec_file), spec_file.parent
        planned = [m["id"] for m in spec["members"]]
        done = read_manifest(d)
        kept = [done[i] for i in planned if i in done and (d / "members" / i / "metrics.csv").exists()]
        grok = sorted(r["grokked_step"] for r in kept if r.get("grokked"))
        gaps = [r["delay"] for r in kept if r.get("grokked") and r.get("delay") is not None]
        mins = [r["seconds"] / 60 for r in kept]
        rows.append([f"`{d.relative_to(root / 'figures')}`", _kept_setting(spec), f"{len(kept)} of {len(planned)}",
                     f"{len(grok)} (at {grok[0]}-{grok[-1]})" if grok else "0",
                     f"{_med(gaps):g}" if gaps else "-",
                     f"{sum(mins):.1f} ({min(mins):.0f}-{max(mins):.0f} each)" if mins else "-"])
    head = ["kept population (under figures/)", "setting", "members kept", "grokked (steps)", "median gap",
            "training minutes, wall (per member)"]
    return (_table(head, rows) + "\n\nWritten by `python analyses/claims_ledger.py` from each population's kept "
            "`sweep.json` and `finished.jsonl`; the minutes are each member's own wall time, with other runs "
            "sharing the 2 cores.")


CHANCE_AT = 0.02  # "at chance" for a mod-113 recipient: about twice chance (1/113 = 0.009), the transplant's rule


def _at_memorisation(metrics: pd.DataFrame) -> dict:
    """A run's test accuracy where it memorised, how long it stayed at chance after, and whether it grokked."""
    from mechgrok.milestones import transition_metrics

    tr = transition_metrics(metrics)
    m = metrics.sort_values("step")
    acc = None if tr.memorised_step is None else float(m.loc[m["step"] == tr.memorised_step, "test_acc"].iloc[0])
    after = m[m["step"] >= (tr.memorised_step or 0)]
    left, under = after.loc[after["test_acc"] > CHANCE_AT, "step"], after.loc[after["test_acc"] <= CHANCE_AT, "step"]
    at_chance = tr.memorised_step is not None and acc <= CHANCE_AT
    return {"memorised": tr.memorised_step, "acc": acc, "grokked": tr.grokked_step, "last": tr.last_step,
            "left_chance": int(left.iloc[0]) if at_chance and len(left) else None,
            "last_at_chance": int(under.iloc[-1]) if at_chance else None}


def chance_block(root: Path) -> str:
    """Why the at-chance transplant (row 004-transplant-chance) has no base run that fits a CPU session:
    every run memorises above chance or, where it memorises at chance, leaves chance long before it
    groks. One row per pilot (``figures/backing/transplant_chance_pilot*``) and per member of the
    seed004 preset's probed population, read from their metrics; then the rank correlation, over the
    population, of test accuracy at memorisation with the grokking step."""
    from scipy.stats import spearmanr

    runs = []
    for d in sorted((root / "figures/backing").glob("transplant_chance_pilot*")):
        cfg = _json(d / "config.json")
        runs.append((f"pilot `{d.name}`", cfg, pd.read_csv(d / "metrics.csv")))
    pop = root / "figures/dynamics/seed004/kept/probed/members"
    members = sorted(pop.glob("seed=*/metrics.csv"), key=lambda f: int(f.parent.name.split("=")[1]))
    runs += [(f"seed004 `{f.parent.name}`", _json(f.parent / "config.json"), pd.read_csv(f)) for f in members]
    rows, population = [], []
    for name, cfg, m in runs:
        t, r = cfg["train"], _at_memorisation(m)
        rows.append([name, f"{cfg['task']['frac']:g}", f"{t['lr']:g}", f"{t['weight_decay']:g}", cfg["train"]["seed"],
                     r["memorised"] if r["memorised"] is not None else "-",
                     f"{r['acc']:.3f}" if r["acc"] is not None else "-",
                     "-" if r["last_at_chance"] is None else f"{r['left_chance'] or '-'} / {r['last_at_chance']}",
                     r["grokked"] if r["grokked"] is not None else f"not by {r['last']}"])
        if name.startswith("seed004") and r["acc"] is not None:
            population.append((r["acc"], r["grokked"] if r["grokked"] is not None else float("inf")))
    head = ["run", "frac", "lr", "wd", "seed", "memorised (step)", "test acc there",
            f"first above {CHANCE_AT} / last at or under it", "grokked (step)"]
    out = _table(head, rows)
    if len(population) >= 3:
        rho, p = spearmanr([a for a, _ in population], [g for _, g in population])
        out += (f"\n\nOver the {len(population)} seed004 members, test accuracy at memorisation against the grokking step "
                f"(a member that did not grok ranked after all): Spearman rho = {rho:.2f} (p = {p:.2g}).")
    return out + (f"\n\nWritten by `python analyses/claims_ledger.py` from each run's committed `metrics.csv`. "
                  f"Chance is 1/113 = 0.009; memorised and grokked as everywhere (`mechgrok.milestones`).")


BLOCKS = {  # name -> (file, renderer)
    "chance-recipients": ("figures/README.md", chance_block),
    "kept-populations": ("figures/README.md", kept_block),
    "claims-freezing": ("figures/README.md", freezing_block),
    "claims-freezing-full": ("figures/README.md", lambda root: freezing_block(root, "freezing_phases_full")),
    "claims-transplant": ("figures/README.md", transplant_block),
    "claims-plateau-transplant": ("figures/README.md", plateau_transplant_block),
    "claims-transplant-dynamics": ("figures/README.md", transplant_dynamics_block),
    "claims-transplant-seed004": ("figures/README.md", lambda root: transplant_dynamics_block(root, "fourier_transplant_seed004")),
    "claims-transplant-seed004-chance": ("figures/README.md",
                                         lambda root: transplant_dynamics_block(root, "fourier_transplant_seed004_chance0.02_train0.2")),
    "claims-embedding": ("figures/README.md", embedding_block),
    "claims-ablation": ("figures/README.md", ablation_block),
    "claims-momentum": ("figures/README.md", momentum_block),
    "claims-grokfast": ("figures/README.md", grokfast_block),
    "claims-parity": ("figures/README.md", parity_block),
    "demo-ablation": ("README.md", demo_ablation_block),
    "demo-run": ("figures/README.md", demo_run_block),
    "presets-measured": ("README.md", presets_block),
}


markers = ex.section_markers


def latent_block(rows: list[dict]) -> str:
    """README's training-map findings: the ledger's Hu et al. rows (every state's coefficient)."""
    by = {r["id"]: r for r in rows}
    names = {"hu-detour": "a+b mod 53 without LayerNorm", "hu-parity": "3-of-12-bit parity", "hu-ln": "with LayerNorm"}
    return "\n".join(f"- {names[k]} ({by[k]['n']} seeds): {by[k]['ours']}; against Hu et al.: {by[k]['verdict']}"
                      for k in names if by[k]["ours"] is not None)


def latent_states_block(rows: list[dict]) -> str:
    r = next(r for r in rows if r["id"] == "hu-detour")
    return r["ours"] or "not run"


def dynamics_block(rows: list[dict]) -> str:
    """figures/dynamics/preset/README's claims table: the ledger's rows on the dynamics preset."""
    ids = ["004-hessian", "004-agreement", "004-momentum", "004-erank", "004-cycle-wd1", "004-cycle-wd025", "004-cycle-wd2",
           "004-dips"]
    by = {r["id"]: r for r in rows}
    return _table(["seed 004's claim", "on the preset (ours)", "n", "test", "verdict"],
                  [[by[i]["claim"], by[i]["ours"] or "-", by[i]["n"], by[i]["test"] or "-", by[i]["verdict"]] for i in ids])


def dynamics_summary(rows: list[dict]) -> str:
    by = {r["id"]: r for r in rows}
    ids = ["004-hessian", "004-agreement", "004-momentum", "004-erank", "004-cycle-wd1", "004-cycle-wd025", "004-cycle-wd2",
           "004-dips"]
    return "\n".join(f"- {by[i]['claim']}: **{by[i]['verdict'].split(' (')[0]}**. Ours: {by[i]['ours']}." for i in ids)


SEED004_OWN = ["004-transition", "004-hessian-own", "004-agreement-own", "004-momentum-own", "004-erank-own",
               "004-erank-long", "004-dips-own", "004-hessian-lag-own", "004-cycle-wd1-own", "004-cycle-wd025-own",
               "004-cycle-wd2-own", "004-transplant-own", "004-transplant-chance"]


def seed004_own_summary(rows: list[dict]) -> str:
    """figures/README's list of seed 004's rows at its own setting: n, ours and the verdict, from the ledger."""
    by = {r["id"]: r for r in rows}
    agrees = {True: "agrees at our setting", False: "differs at our setting", None: "no test"}

    def line(r: dict) -> str:
        test = f"{agrees[None if r['agrees_at_our_setting'] is None else bool(r['agrees_at_our_setting'])]}"
        test += f" ({r['test'].split(' (')[0]})" if r["test"] not in (None, "-") else ""
        return f"- `{r['id']}`, n = {r['n'] or 0}: {r['ours'] or 'no data'}. {test}; **{r['verdict']}**."
    return "\n".join(line(by[i]) for i in SEED004_OWN)


def nanda_block(rows: list[dict]) -> str:
    """README's table of our Nanda run against the paper: the ledger's Nanda rows."""
    by = {r["id"]: r for r in rows}
    ids = ["nanda-keys", "nanda-embed", "nanda-neurons", "nanda-phases", "nanda-loss"]
    return _table(["Nanda et al. 2023 (40k epochs)", "ours", "data", "verdict"],
                  [[by[i]["claim"], by[i]["ours"] or "-", f"`{by[i]['data']}`", by[i]["verdict"]] for i in ids])


ROW_BLOCKS = {"seed004-own": ("figures/README.md", seed004_own_summary), "dynamics-summary": ("README.md", dynamics_summary), "nanda-table": ("README.md", nanda_block), "dynamics-claims": ("figures/dynamics/preset/README.md", dynamics_block),"what-reproduces": ("README.md", what_reproduces), "latent-findings": ("README.md", latent_block),
              "latent-modular-states": ("figures/latent/README.md", latent_states_block)}  # made from the ledger's rows


# The sections the re-run scripts write after each run, each from its own JSON report: regenerated
# here from the committed file through the script's own ``section(data)`` (``None``: not run yet).
SCRIPT_SECTIONS = {  # name -> (file, script, its JSON report)
    "nanda": ("figures/README.md", "nanda_progress_measures", "figures/nanda/summary.json"),
    "seed001_main_run": ("figures/README.md", "seed001_main_run", "figures/seed001_main_run.json"),
    "weight_decay_comparison": ("figures/README.md", "weight_decay_comparison", "figures/weight_decay_comparison.json"),
    "seed002_example1": ("figures/README.md", "seed002_example1", "figures/seed002_example1.json"),
    "grokfast_mod113": ("figures/README.md", "grokfast_vs_momentum", "figures/grokfast_mod113.json"),
    "seed004_transition": ("figures/README.md", "seed004_transition", "figures/dynamics/seed004/transition.json"),
    "limit_cycle_seed004": ("figures/README.md", "limit_cycle_seed004", "figures/dynamics/seed004/limit_cycle.json"),
}


def script_section(root: Path, name: str) -> str:
    _, script, data = SCRIPT_SECTIONS[name]
    return _script(script).section(_json(root / data) if (root / data).exists() else None)


def render_blocks(root: Path, rows: list[dict]) -> dict[str, str]:
    out = {name: fn(root) for name, (_, fn) in BLOCKS.items()}
    out |= {name: script_section(root, name) for name in SCRIPT_SECTIONS}
    return out | {name: fn(rows) for name, (_, fn) in ROW_BLOCKS.items()}


def block_file(name: str) -> str:
    return next(table[name][0] for table in (ROW_BLOCKS, SCRIPT_SECTIONS, BLOCKS) if name in table)


def apply_blocks(texts: dict[str, str], blocks: dict[str, str]) -> dict[str, str]:
    """``texts`` (file -> text) with every block written between its markers; a missing marker
    is an error (the block's place is chosen by hand, once)."""
    texts = dict(texts)
    for name, body in blocks.items():
        f = block_file(name)
        begin, end = markers(name)
        t = texts[f]
        if begin not in t or end not in t:
            raise ValueError(f"{f}: no {begin} ... {end} markers; add them where the block belongs")
        texts[f] = t[: t.index(begin) + len(begin)] + "\n" + body.rstrip("\n") + "\n" + t[t.index(end):]
    return texts


def generate(root: Path = ROOT) -> dict[str, str]:
    """Every file the ledger writes, path (relative to ``root``) -> text, computed in memory."""
    rows = ledger(root)
    files = {"figures/CLAIMS.md": ledger_markdown(rows),
             "figures/CLAIMS.json": json.dumps({"rows": rows}, indent=1, default=str) + "\n"}
    blocks = render_blocks(root, rows)
    texts = {f: (root / f).read_text() for f in {block_file(n) for n in blocks}}
    return files | apply_blocks(texts, blocks)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file differs from its data")
    args = ap.parse_args()
    files = generate(ROOT)
    stale = [f for f, text in files.items() if not (ROOT / f).exists() or (ROOT / f).read_text() != text]
    if args.check:
        if stale:
            sys.exit(f"out of date with the data: {', '.join(stale)} (run python analyses/claims_ledger.py)")
        print("ledger and tables match the data")
        return
    from mechgrok.files import write_text

    for f in stale:
        write_text(ROOT / f, files[f])
    print(f"wrote {', '.join(stale) or 'nothing (all up to date)'}")


if __name__ == "__main__":
    main()
