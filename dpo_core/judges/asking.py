"""Ask a judge, parse strictly, ask again with the problem named, give up after a bound.

The one re-ask of every LLM judge: the rubric and pairwise feedback judges, MT-Bench grading and
the evaluation's pairwise win rates. Each job is one conversation; ``parse(j, answer)`` returns
``(value, "")`` or ``(None, problem)``. A request that fails outright is given up at once as
retryable (a later run tries again); an answer that will not parse is re-asked with the judge's
own answer and the problem appended (the same prompt again, greedily decoded, would only repeat
the answer), ``max_retries`` times, then given up for good.
"""

from __future__ import annotations

from collections.abc import Callable

from dpo_core.inference.openai_client import Failure


def ask_until_parsed(
    backend,
    conversations: list[list[dict]],
    parse: Callable[[int, str], tuple[object | None, str]],
    on_parsed: Callable[[int, object, list[str]], None],
    on_given_up: Callable[[int, str, list[str], bool], None],
    max_retries: int,
    max_new_tokens: int,
) -> int:
    """Run every conversation to a parsed value or a give-up; return how many answers failed to parse."""
    raw: dict[int, list[str]] = {j: [] for j in range(len(conversations))}
    pending = list(range(len(conversations)))
    current = list(conversations)
    failures = 0
    for attempt in range(max_retries + 1):
        retry: list[int] = []

        def done(k: int, answer, pending=pending, retry=retry, last=attempt == max_retries) -> None:
            nonlocal failures
            j = pending[k]
            if isinstance(answer, Failure):
                on_given_up(j, f"judge request failed: {answer.reason}", raw[j], True)
                return
            raw[j].append(answer)
            value, problem = parse(j, answer)
            if value is not None:
                on_parsed(j, value, raw[j])
                return
            failures += 1
            if last:
                on_given_up(j, f"unparseable after {len(raw[j])} answers: {problem}", raw[j], False)
                return
            current[j] = current[j] + [
                {"role": "assistant", "content": answer},
                {"role": "user", "content": f"Your answer could not be read: {problem}. "
                                            "Answer again in exactly the format asked."}]
            retry.append(j)

        backend.run([current[j] for j in pending], max_new_tokens, done)
        pending = retry
        if not pending:
            break
    return failures


def ask_all(backend, conversations: list[list[dict]], parse: Callable[[str], tuple[object | None, str]],
            max_retries: int, max_new_tokens: int) -> list[tuple[object | None, list[str]]]:
    """(parsed value, or None after the re-asks, and the judge's answers) for every conversation, for
    benchmarks, which count unparseable answers rather than set them aside. A request that failed for
    good raises: a score over whichever items happened to get through would mislead."""
    results: list[tuple[object | None, list[str]]] = [(None, [])] * len(conversations)
    failed: list[str] = []

    def gave_up(j: int, reason: str, answers: list[str], retryable: bool) -> None:
        results[j] = (None, answers)
        if retryable:
            failed.append(reason)

    ask_until_parsed(backend, conversations, lambda _, answer: parse(answer),
                     lambda j, value, answers: results.__setitem__(j, (value, answers)), gave_up,
                     max_retries, max_new_tokens)
    if failed:
        raise RuntimeError(f"{backend.name}: {len(failed)} of {len(conversations)} judge requests failed; first: {failed[0]}")
    return results
