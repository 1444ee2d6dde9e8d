"""Jobs of rules/sanity.smk that run a network: the cascading-randomization check."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import torch

from vislib.data import DatasetRef
from vislib.io import SanityMaps, provenance, read_image_list, save_sanity_maps, write_parquet
from vislib.methods import get as get_method
from vislib.metrics.sanity import CascadeStep, randomization_curve
from vislib.models import preprocessing_of
from vislib.pipeline import load_model, resolve_device


def sanity(*, image_list: str, n_images: int, method: tuple[str, dict[str, Any]], model: dict[str, Any],
           layer: str, dataset: DatasetRef, target: str, steps: int, device: str, labels: dict[str, str],
           out: str, maps_out: str) -> None:
    """Run the randomization check of one method on the first `n_images` listed images; write its rows, and the
    first image's map at every step of the cascade (for the strip of maps in the report)."""
    torch.manual_seed(0)
    net = load_model(model, device)
    batch = dataset.open().load_batch(read_image_list(image_list)[:n_images], preprocessing_of(net))
    images = batch.images.to(next(net.parameters()).device)
    if target == "label":
        targets = batch.labels.to(images.device)
    else:
        with torch.no_grad():
            targets = net(images).argmax(1)
    first_maps: list[torch.Tensor] = []
    step_names: list[str] = []

    def keep_first(step: CascadeStep, maps: torch.Tensor) -> None:
        first_maps.append(maps[0].float().cpu())
        step_names.append(step.last_module)

    frame = randomization_curve(net, layer, method[0], method[1], images, targets, batch.image_ids, steps,
                                on_step=keep_first)
    pixels = preprocessing_of(net).denormalize(batch.images[:1]).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    save_sanity_maps(maps_out, SanityMaps(pixels, torch.stack(first_maps).numpy(), step_names,
                                          get_method(method[0], **method[1]).maps_are_signed(),
                                          f"{labels['method']}: {labels['model']} / {labels['layer']}"))
    frame = frame.assign(**labels)
    write_parquet(out, pa.Table.from_pandas(frame, preserve_index=False),
                  provenance({"method": method, "model": model, "layer": layer, "n_images": n_images,
                              "steps": steps, "target": target}, str(resolve_device(device))))
