"""lm-evaluation-harness tasks on an in-memory model, when the package is installed
(``pip install "lm_eval[hf]"``; stock tasks fetch their data from the hub, so offline
machines need local task files)."""

from __future__ import annotations

import importlib.util


def run(model, tokenizer, tasks: list[str], limit: int | None = None) -> dict[str, float]:
    """Each task's numeric metrics as ``lm_eval/<task>/<metric>``."""
    if importlib.util.find_spec("lm_eval") is None:
        raise RuntimeError('lm_eval_tasks were given but lm-evaluation-harness is not installed: pip install "lm_eval[hf]"')
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    # HFLM runs an already built model where it is (ignoring its own device argument) and moves its
    # inputs to model.device: where load_model placed it
    results = lm_eval.simple_evaluate(model=HFLM(pretrained=model, tokenizer=tokenizer), tasks=tasks, limit=limit)
    return {f"lm_eval/{task}/{metric.split(',')[0]}": float(value)
            for task, metrics in results["results"].items() for metric, value in metrics.items()
            if isinstance(value, int | float) and not metric.endswith("_stderr,none")}
