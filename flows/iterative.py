"""Iterative on-policy DPO: rounds of sample -> judge -> DPO, each from the last round's policy.

Round r: the policy of round r-1 (round 1: ``model``, or the registry's champion) samples K
candidates for the round's prompts, the judge scores them (with ``rounds.self_rewarding``, the
policy itself), the pairs are binarized (best vs worst, as RLHFlow), and DPO with an NLL term on
the chosen answers (Iterative RPO) trains from that policy against the reference
``rounds.reference`` names. Each round's policy is evaluated on the held-out prompts (and the
transfer prompts); a round worse than the one before stops the loop, and the best round's policy
is the challenger the gate weighs against the champion.

Every stage is a cached task keyed by its inputs' digests, so a run killed in round 3 and started
again reuses rounds 1-2 and round 3's finished feedback items. Scheduled retraining is one more
round from the champion: ``--start_from champion --rounds.rounds 1`` on the new prompts.

Run it on the embedded default with ``python -m flows.iterative`` (or ``dpo-pipeline iterative``).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger

from dpo_core.common.models import EMBEDDED_DEFAULT
from dpo_core.data.build_dataset import BuildConfig
from dpo_core.evaluate.config import EvalConfig
from dpo_core.evaluate.gate import GateConfig
from dpo_core.evaluate.heldout import load_prompts
from dpo_core.feedback.config import FeedbackConfig
from dpo_core.feedback.prompts import check_judge
from dpo_core.iterative import RoundsConfig, best_round, round_dpo, round_feedback
from dpo_core.train.config import DPOConfig
from flows.presets import ITERATIVE_DEMO
from tasks.build_dataset import build_dataset_task, source_digest
from tasks.dpo import dpo_task
from tasks.evaluate import evaluate_task
from tasks.feedback import collect_feedback_task
from tasks.plumbing.champion import fetch_champion_task
from tasks.plumbing.lineage import model_ref
from tasks.plumbing.results import EvalReport, PromotionDecision
from tasks.plumbing.tracking import flow_parent_run, round_run
from tasks.prepare_model import prepare_model_task
from tasks.promote import promote_task
from tasks.rounds import RoundResult, plot_rounds_task, record_round_task, round_prompts_task


@flow(name="dpo-iterative")
def iterative(
    model: str = EMBEDDED_DEFAULT,
    data: BuildConfig = ITERATIVE_DEMO["data"],
    rounds: RoundsConfig = ITERATIVE_DEMO["rounds"],
    feedback: FeedbackConfig = ITERATIVE_DEMO["feedback"],
    dpo: DPOConfig = ITERATIVE_DEMO["dpo"],
    evaluation: EvalConfig = ITERATIVE_DEMO["evaluation"],
    gate: GateConfig = ITERATIVE_DEMO["gate"],
    start_from: Literal["model", "champion"] = "model",
    chat_template: str | None = None,
    stage_timeout_s: float | None = None,
    api_key_secret: str | None = None,
) -> tuple[EvalReport, PromotionDecision]:
    """Rounds of on-policy sampling, judging and DPO; the best round's policy goes to the gate.

    Args:
        model: The starting policy and the base it is compared with: a local folder, a hub id, or the
            embedded SmolLM2-135M-Instruct (run SFT first for a model without instruction tuning).
        data: The prompts the rounds answer (dealt into one slice per round with rounds.prompts=fresh).
        rounds: How many rounds, which prompts each answers, the reference, the stop rule, self-rewarding.
        feedback: Candidate sampling, the judge and binarization of every round.
        dpo: Each round's DPO (default: sigmoid + NLL on the chosen answers, Iterative RPO).
        evaluation: Held-out evaluation of each round's policy.
        gate: When a round counts as worse than the last, and when the best round replaces the champion.
        start_from: model, or champion: round 1 samples from the registry's champion (gate.registered_model),
            so a scheduled run builds on the last promoted model; model when there is none yet.
        chat_template: For a base model without one: chatml, zephyr or a Jinja file (special tokens added).
        stage_timeout_s: Kill a stage's process group after this many seconds.
        api_key_secret: A Prefect Secret block holding the API key of OpenAI-compatible endpoints.
    """
    params = {"model": model, "data": asdict(data), "rounds": asdict(rounds), "feedback": asdict(feedback),
              "dpo": asdict(dpo), "evaluation": asdict(evaluation), "gate": asdict(gate), "start_from": start_from,
              "chat_template": chat_template}
    log = get_run_logger()
    with flow_parent_run(params) as parent:
        base = prepare_model_task(model, chat_template)
        dataset = build_dataset_task(data, source_digest(data), parent)
        load_prompts(evaluation, Path(dataset.eval_path))  # what would fail after round 1 fails now
        if not rounds.self_rewarding:
            check_judge(feedback.judge, Path(dataset.train_path))
        champion = fetch_champion_task(gate.registered_model)
        if start_from == "champion" and champion is None:
            log.info(f"no champion of {gate.registered_model} yet: round 1 starts from {model}")
        initial = champion if start_from == "champion" and champion else model_ref(base, "dpo")
        baselines = {"base": base} | ({"champion": champion} if champion else {})
        policy, history = initial, []
        previous = None  # (report, label) holding the policy the round starts from
        for r in range(1, rounds.rounds + 1):
            with round_run(parent, r, {"policy": policy.model_uri or policy.model_path}) as round_parent:
                prompts = round_prompts_task(dataset, rounds, r)
                pairs = collect_feedback_task(round_feedback(feedback, rounds, policy.model_path), policy.model_path,
                                              prompts, round_parent, stage_timeout_s, api_key_secret)
                if not pairs.stats["pairs"] and history:  # nothing left to learn from this policy's samples
                    log.info(f"round {r}: the judge separated none of the candidates (no pairs): stopping")
                    break
                reference = initial if rounds.reference == "initial" else None
                trained = dpo_task(round_dpo(dpo, rounds), policy, pairs, round_parent, stage_timeout_s,
                                   reference=reference)
                report = evaluate_task(evaluation, baselines | {"dpo": trained}, dataset, round_parent,
                                       stage_timeout_s, dpo.beta)
                if previous is None:
                    previous = (report, "champion" if initial is champion else "base")
                    start = previous
                result = record_round_task(r, rounds, gate, round_parent, parent, pairs, trained, report, previous)
            history.append(result)
            log.info(f"round {r}: {result.score:.3f} on the gate's metric; " + "; ".join(result.reasons))
            if rounds.stop_when_worse and result.regressed:
                log.info(f"round {r} is worse than round {r - 1}: stopping")
                break
            policy, previous = trained, (report, "dpo")
        best = best_round([h.score for h in history])
        plot_rounds_task(parent, *start, history, best)
        chosen: RoundResult = history[best]
        log.info(f"round {chosen.round} is the challenger")
        decision = promote_task(gate, chosen.model, chosen.report, parent)
    return chosen.report, decision


if __name__ == "__main__":  # the same as `dpo-pipeline iterative`: --help lists every setting
    import sys

    from flows.cli import main

    main(["iterative", *sys.argv[1:]])
