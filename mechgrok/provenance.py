"""Where and with what a result was made: written next to every figure and table, so a
reader can tell which machine, cores, threads and versions produced it."""

from __future__ import annotations

import os

import torch


def versions() -> dict:
    import importlib.metadata as md

    def v(name):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    return {"mechgrok": v("mechgrok"), "torch": torch.__version__, "transformer_lens": v("transformer_lens")}


def provenance() -> dict:
    """Machine, cores, torch threads, GPU, versions and the UTC time."""
    import datetime
    import platform

    return {"machine": platform.processor() or platform.machine(), "cpu_cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "made": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")} | versions()


def hardware(prov: dict | None = None) -> str:
    """One line for a caption: "2 CPU cores (x86_64), 2 torch threads, no GPU, torch 2.13.0"."""
    p = prov or provenance()
    gpu = p.get("gpu") or "no GPU"
    return (f"{p['cpu_cores']} CPU cores ({p['machine']}), {p['torch_threads']} torch threads, {gpu}, "
            f"torch {p['torch']}")
