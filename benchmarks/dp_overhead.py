"""Cost of record-level DP-SGD on a LoRA adapter, against non-private training in the same run.

    python benchmarks/dp_overhead.py [--quick] [--device cuda] [--models minilm] [--batch 64]

For each model (MiniLM + LoRA r=8 on query,value + head; SmolLM2-135M + LoRA
r=8 on q_proj,v_proj) and each mode, a fresh subprocess loads the model, warms
up, and times local training steps on a fixed batch:

* ``nonprivate``: AdamW on the adapter;
* ``hooks``: Opacus GradSampleModule (per-sample gradients via hooks) +
  privfed's NoisedDPOptimizer (per-sample clipping, Gaussian noise);
* ``ghost``: Opacus ghost clipping (per-sample gradient norms without
  per-sample gradients, two backward passes) + privfed's noise.

Prints one JSON object with ms per step, peak resident memory growth during
training (MiB, over the loaded model), and ``overhead_vs_nonprivate_hooks``
and ``overhead_vs_nonprivate_ghost`` (DP ms / non-private ms), and the same
ratios for peak memory (``memory_overhead_vs_nonprivate_*``). With
``--device cuda`` steps are timed with the GPU synchronised and the memory
figures are the GPU's peak allocated memory (``torch.cuda.max_memory_allocated``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODELS = {
    "minilm": {"batch": 16, "length": 128, "targets": ("query", "value"), "num_labels": 5},
    "smollm2": {"batch": 8, "length": 64, "targets": ("q_proj", "v_proj"), "num_labels": None},
}


def _rss_mib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")  # pragma: no cover


def worker(model_name: str, mode: str, steps: int, device_name: str = "cpu", batch_size: int = 0) -> dict[str, Any]:
    """Runs in a subprocess: load, warm up, time ``steps`` steps."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np
    import torch
    import transformers

    from privfed import AdapterConfig, LoraAdapterConfig
    from privfed.adapters import wrap_model
    from privfed.client.data import ExampleSet
    from privfed.data.tokenize import TokenizedTexts
    from privfed.models import load_base_model
    from privfed.privacy.dpsgd import (
        NoisedDPOptimizer,
        NoisedGhostDPOptimizer,
        ghost_backward,
        make_grad_sample_module,
    )
    from privfed.privacy.noise import SeededNoise
    from privfed.tasks import get_task

    transformers.logging.set_verbosity_error()
    spec = MODELS[model_name]
    device = torch.device(device_name)
    cuda = device.type == "cuda"
    loaded = load_base_model(model_name, num_labels=spec["num_labels"])
    lora = LoraAdapterConfig(rank=8, target_modules=spec["targets"])
    model = wrap_model(loaded.model, AdapterConfig(method="lora", method_config=lora), loaded.spec)
    model.to(device)
    task = get_task(loaded.spec.task)
    rng = np.random.default_rng(0)
    b, length = batch_size or spec["batch"], spec["length"]
    ids = rng.integers(100, 5000, size=(b, length)).astype(np.int32)
    data = ExampleSet(
        TokenizedTexts(ids, np.ones_like(ids, dtype=np.int8)), rng.integers(0, 2, size=b).astype(np.int64)
    )
    batch = data.batch(np.arange(b, dtype=np.int64))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer: Any = torch.optim.AdamW(params, lr=1e-3)
    forward_model: Any = model
    if mode != "nonprivate":
        forward_model = make_grad_sample_module(model, mode=mode, max_grad_norm=1.0)
        optimizer = (NoisedGhostDPOptimizer if mode == "ghost" else NoisedDPOptimizer)(
            optimizer, noise=SeededNoise(0), noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=b
        )
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        if mode == "ghost":
            ghost_backward(forward_model, optimizer, task.per_example_loss(forward_model, batch))
        else:
            task.loss(forward_model, batch).backward()
        optimizer.step()

    step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = _rss_mib()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "ms_per_step": 1e3 * elapsed / steps,
        "device": device_name,
        "peak_rss_mib" if not cuda else "peak_gpu_mib": peak,
        "training_rss_growth_mib" if not cuda else "training_gpu_growth_mib": peak - base,
        "batch": b,
        "length": length,
        "steps": steps,
        "trainable_params": sum(p.numel() for p in params),
    }


def run_worker(model_name: str, mode: str, steps: int, device: str = "cpu", batch: int = 0) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", model_name, mode, str(steps), device, str(batch)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{model_name}/{mode} failed:\n{proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        print(json.dumps(worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], int(sys.argv[6]))))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps (< 1 minute)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the steps run")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of: " + ", ".join(MODELS))
    parser.add_argument("--batch", type=int, default=0, help="batch size for every model (default: per model)")
    args = parser.parse_args()
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = sorted(set(names) - set(MODELS))
    if unknown or not names:
        parser.error(f"--models: unknown {unknown}; known: {', '.join(MODELS)}")
    if args.batch < 0:
        parser.error("--batch must be >= 1 (or 0 for the per-model default)")
    from _common import machine

    gpu = args.device == "cuda"
    steps = {"minilm": 3 if args.quick else (100 if gpu else 20), "smollm2": 1 if args.quick else (40 if gpu else 8)}
    memory = "peak_gpu_mib" if gpu else "peak_rss_mib"
    report: dict[str, Any] = {
        "benchmark": "dp_overhead",
        "quick": args.quick,
        "device": args.device,
        "machine": machine(),
        "models": {},
    }
    for name in names:
        runs = {
            mode: run_worker(name, mode, steps[name], args.device, args.batch)
            for mode in ("nonprivate", "hooks", "ghost")
        }
        base = runs["nonprivate"]
        report["models"][name] = {
            **runs,
            "overhead_vs_nonprivate_hooks": runs["hooks"]["ms_per_step"] / base["ms_per_step"],
            "overhead_vs_nonprivate_ghost": runs["ghost"]["ms_per_step"] / base["ms_per_step"],
            "memory_overhead_vs_nonprivate_hooks": runs["hooks"][memory] / base[memory],
            "memory_overhead_vs_nonprivate_ghost": runs["ghost"][memory] / base[memory],
        }
    for key in ("overhead_vs_nonprivate_hooks", "overhead_vs_nonprivate_ghost"):
        report[key] = report["models"][names[0]][key]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
