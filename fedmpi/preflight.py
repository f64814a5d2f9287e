"""The launcher's checks beyond config and data, so that errors the ranks would
find 10-17 s in (behind an MPICH Abort line) are one message before any starts.

* a model path that does not load (read from its config.json only);
* the algorithm's `check_model` (split points, layers) on a weightless
  skeleton of the model — built from the model's config on the meta device,
  no weights read, so the ranks do not build the full model twice;
* the GPU placement of the ranks on this host (runtime.backend=nccl with
  fewer GPUs than ranks is refused here, not by NCCL mid-job).
"""
from __future__ import annotations

import socket
from typing import Any

from fedmpi.engine.algorithm import Algorithm
from fedmpi.errors import ConfigError
from fedmpi.registry import ALGORITHMS


def check_model(cfg: Any, num_labels: int) -> None:
    """A model path that does not load, and the algorithm's check_model (split
    points, layers) on a meta-device skeleton; packaged models need neither
    unless the algorithm checks structure (no transformers import then)."""
    from fedmpi.models import backbone, vision

    algorithm = ALGORITHMS.get(cfg.algorithm)
    structural = getattr(algorithm.check_model, "__func__", None) is not Algorithm.check_model.__func__
    packaged = cfg.model.name in (backbone.TINY, backbone.MINILM, vision.TINY_VIT, vision.TINY_CLIP)
    if packaged and not structural:
        return
    model = skeleton(cfg, num_labels)  # an unloadable model path is a ConfigError here
    if model is None or not structural:
        return
    if not algorithm.builds_own_method:
        from fedmpi.models.methods import apply_method

        try:
            import torch

            with torch.device("meta"):
                model = apply_method(model, cfg.method)
        except ConfigError:
            raise
        except Exception:  # noqa: BLE001 - a method that cannot run on meta: the ranks check it for real
            return
    algorithm.check_model(cfg, model)


def skeleton(cfg: Any, num_labels: int):
    """The model's modules without weights (meta device), or None if it cannot be had cheaply."""
    import torch

    from fedmpi.models import backbone, vision

    m = cfg.model
    try:
        if vision.vision_kind(m) is not None:
            if m.name not in (vision.TINY_VIT, vision.TINY_CLIP):
                return None  # pre-trained vision models: no cheap skeleton; the ranks check
            with torch.device("meta"):
                return vision.build_vision(m, num_labels)
        from transformers import AutoConfig, AutoModelForSequenceClassification

        if m.name == backbone.TINY:
            conf = backbone.tiny_config(m, num_labels)
        else:
            path = backbone.resolve(m.name)
            try:
                conf = AutoConfig.from_pretrained(path, num_labels=num_labels)
            except (OSError, ValueError) as exc:
                raise backbone._hub_hint(path, exc) from None
        with torch.device("meta"):
            return AutoModelForSequenceClassification.from_config(conf)
    except ConfigError:
        raise
    except Exception:  # noqa: BLE001 - anything unexpected: leave the check to the ranks
        return None


def check_placement(runtime_cfg: Any, ranks: int) -> str:
    """The plan for `ranks` ranks on this host (as `fedmpi launch` starts them); its description."""
    from fedmpi.runtime.bootstrap import visible_gpus
    from fedmpi.runtime.placement import Seat, plan

    host, gpus = socket.gethostname(), visible_gpus()
    return plan([Seat(r, host, r, gpus) for r in range(ranks)], runtime_cfg.backend,
                getattr(runtime_cfg, "device", "auto")).describe()
