"""Image half of the inversion sweep: DLG / Inverting Gradients on sklearn digits.

Under SecAgg the attacker sees the sum of ``N`` one-step uploads of batch
``B``, which is ``N`` times the mean gradient of one batch of ``N*B`` images;
the attack is therefore run at batch ``N*B`` on the rescaled sum, and the
target client's ``B`` images are scored against their best matches among the
``N*B`` reconstructions (the strongest view of what SecAgg leaves).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Hashable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from attacks.inversion.image import (
    dlg,
    image_observation,
    inverting_gradients,
    match_reconstructions,
    plot_reconstructions,
    recover_labels,
)
from attacks.inversion.vision import build_vision_model
from attacks.metrics import psnr, ssim
from attacks.threat import ThreatModel
from privfed import load_dataset
from privfed.rng import derive_seed

if TYPE_CHECKING:
    from attacks.inversion.sweep import InversionSweep

__all__ = ["image_records"]


def image_records(
    sweep: InversionSweep, done: Mapping[Hashable, dict[str, Any]], out: Path
) -> Iterator[dict[str, Any]]:
    """Run (or reuse from ``done``) every image configuration; yields records in order.

    Also writes ``image_reconstructions.png`` for the baseline batch of the first trial.
    """
    from attacks.inversion.sweep import _key, _points, _rng, new_record

    cfg = sweep.image
    data = load_dataset("digits")
    assert data.images is not None
    order = _rng(sweep.seed, "image-order").permutation(len(data.labels))
    model = build_vision_model(cfg.model, seed=sweep.seed)
    points = _points(sweep.design, cfg.batch_sizes, cfg.noise_multipliers, cfg.secagg_clients, cfg.quant_bits)
    for trial in range(cfg.trials):
        for batch_size, noise, cohort, bits in points:
            record = new_record("image", "full", 0, batch_size, noise, cohort, bits, trial)
            if _key(record) in done:
                yield done[_key(record)]
                continue
            start = time.perf_counter()
            batches = []
            for c in range(cohort):
                rows = order[(trial * 64 + c) * 16 : (trial * 64 + c) * 16 + batch_size]
                batches.append((data.images[rows], data.labels[rows]))
            threat = ThreatModel(view="secagg_aggregate", num_clients=cohort) if cohort > 1 else ThreatModel()
            seed_path = ("image-noise", batch_size, str(noise), cohort, bits, trial)

            observe = functools.partial(
                image_observation,
                model,
                batches[0][0],
                batches[0][1],
                lr=cfg.learning_rate,
                threat=threat,
                noise_multiplier=noise,
                clip_norm=cfg.clip_norm if noise > 0 else None,
                other_clients=batches[1:] or None,
            )
            observation = observe(rng=_rng(sweep.seed, *seed_path))
            if bits:
                # Quantization range: the cohort's largest |delta| (a tuned deployment's choice);
                # the same seed path redraws the same DP noise before rounding.
                clip = max(float(np.max(np.abs(v))) for v in observation.updates.values()) or 1.0
                observation = observe(rng=_rng(sweep.seed, *seed_path), quant_bits=bits, quant_clip=clip)
            attack_batch = batch_size * cohort
            labels = recover_labels(observation, model, attack_batch, rng_seed=sweep.seed)
            if cfg.attack == "dlg":
                result = dlg(observation, model, batch_size=attack_batch, labels=labels, steps=cfg.steps)
            else:
                result = inverting_gradients(
                    observation,
                    model,
                    batch_size=attack_batch,
                    labels=labels,
                    steps=cfg.steps,
                    restarts=cfg.restarts,
                    rng_seed=derive_seed(sweep.seed, "inversion", "image-restarts", trial),
                )
            originals = np.asarray(batches[0][0], dtype=np.float64)
            candidates = np.clip(np.asarray(result.images, dtype=np.float64), 0.0, 1.0)
            matched = candidates[match_reconstructions(originals, candidates)]
            true_all = np.concatenate([b[1] for b in batches])
            label_hits = sum(min(int(np.sum(labels == k)), int(np.sum(true_all == k))) for k in np.unique(true_all))
            noise_image = _rng(sweep.seed, "chance-image", trial).uniform(size=originals.shape)
            record.update(
                psnr_db=psnr(originals, matched),
                ssim=ssim(originals, matched),
                label_accuracy=label_hits / len(true_all),
                chance_psnr_db=psnr(originals, noise_image),
                attack=cfg.attack,
                model=cfg.model,
                seconds=round(time.perf_counter() - start, 2),
            )
            if trial == 0 and (batch_size, noise, cohort, bits) == points[0]:
                plot_reconstructions(
                    originals, matched, out / "image_reconstructions.png", titles=[str(int(y)) for y in batches[0][1]]
                )
            yield record
