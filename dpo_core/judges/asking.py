"""Ask a judge, parse strictly, ask again with the problem named, give up after a bound.

Shared by the rubric and pairwise judges. Each job is one conversation; ``parse(answer)`` returns
``(value, "")`` or ``(None, problem)``. A request that fails outright is given up at once as
retryable (a later run tries again); an answer that will not parse is re-asked with the judge's
own answer and the problem appended, ``max_retries`` times, then given up for good.
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
