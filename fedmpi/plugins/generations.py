"""Sample generations as an engine plug-in: at each evaluation the server decodes
a few fixed test prompts greedily (no sampling, so runs are comparable) and
appends one line to generations.jsonl in the run folder:

    {"round": 4, "generations": [{"prompt": "...", "output": "..."}, ...]}

Loss and perplexity say how well the model fits; these lines show what it says.
`causal_lm_plugins` is what experiment.py adds to every causal_lm run: this,
FlowerTune's communication cost (plugins/communication.py) and the task's report
on its data (participants kept / left out, verbalisers) in summary.json.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedmpi.engine.callbacks import Callback
from fedmpi.engine.context import Context
from fedmpi.plugins.communication import CommunicationCost

FILE = "generations.jsonl"


def causal_lm_plugins(ctx: Context) -> list[Callback]:
    plugins: list[Callback] = [CommunicationCost(), TaskReport(ctx.task.info)]
    k = ctx.task.opts.generations
    if k and ctx.rt.is_server:
        texts, ids = ctx.task.generation_prompts(ctx.data.dataset, k)
        plugins.append(Generations(ctx.run_dir, ctx.task.tokenizer(), texts, ids, ctx.task.opts.max_new_tokens,
                                   ctx.device))
    return plugins


class TaskReport(Callback):
    """What the task decided about its data, as summary.json's `task` block."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.info = info

    def on_end(self, summary: dict[str, Any]) -> None:
        summary["task"] = dict(self.info)


class Generations(Callback):
    def __init__(self, run_dir: Path | None, tokenizer: Any, prompts: list[str], prompt_ids: list[list[int]],
                 max_new_tokens: int, device: torch.device) -> None:
        self.path = None if run_dir is None else Path(run_dir) / FILE
        self.tok, self.prompts, self.prompt_ids = tokenizer, prompts, prompt_ids
        self.max_new_tokens, self.device = max_new_tokens, device
        self.outputs: list[str] | None = None  # this evaluation's, written with its round's row

    @torch.no_grad()
    def generate(self, model: nn.Module) -> list[str]:
        """Greedy continuations, one prompt at a time (no padding to get wrong)."""
        from transformers import GenerationConfig

        model.eval()
        tok = self.tok
        config = GenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1,
                                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        outputs = []
        for ids in self.prompt_ids:
            x = torch.as_tensor([ids], device=self.device)
            out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), generation_config=config)
            outputs.append(tok.decode(out[0, x.shape[1]:], skip_special_tokens=True).strip())
        return outputs

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        if self.path is None:
            return {}
        self.outputs = self.generate(model)
        return {}

    def on_round_end(self, rnd: int, row: dict[str, Any]) -> None:
        # The evaluated round is the row's (the server may evaluate round r after round r+1 began).
        if self.path is None or self.outputs is None:
            return
        line = {"round": rnd, "generations": [{"prompt": p, "output": o} for p, o in zip(self.prompts, self.outputs)]}
        self.outputs = None
        with self.path.open("a") as fh:
            fh.write(json.dumps(line) + "\n")
