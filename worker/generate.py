"""Turn a chunk's items into outcomes on the engine host, checking every answer.

Every item's first request goes in at once (the engine batches them with other chunks'
items). As each answer comes back it is checked; one that falls short is asked again at
once, one step further along the ladder, so a retry joins the running batch and never
holds up the chunk's other items. A bad item fails alone. An engine that dies raises out
of here: the chunk is handed back and runs again elsewhere, and those lost answers are
not attempts (infrastructure retries never spend the quality budget).
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any

from vllm.exceptions import VLLMClientError

from quality import checks, ladder, semantic
from quality.checks import Answer, Verdict
from schemas.spec import JobSpec
from schemas.tables import ItemStatus
from worker.attempts import ItemRun, Outcome
from worker.documents import DocumentRun, needs_split
from worker.engine import EngineHost, RequestRefused
from worker.labels import label_probabilities
from worker.prompts import Prompt, PromptTooLong, build, encode_many, question, sampling_for
from worker.requests import Chunk, ask, ask_judge

# What an item's own request can be refused for: the item fails, its chunk goes on.
REFUSED = (PromptTooLong, KeyError, ValueError, TypeError, VLLMClientError, RequestRefused)


def run_items(host: EngineHost, spec: JobSpec, items: list[tuple[int, str, dict[str, Any]]],
              tag: str, embedder: semantic.Embedder | None = None,
              timings: dict[str, float] | None = None) -> list[Outcome]:
    """With `timings`, adds the seconds spent outside the engine: preparing requests
    ("prepare"), and checking answers and asking again ("checks")."""
    started = time.perf_counter()
    waited = 0.0
    # Sampled decoding may spell a label in smaller pieces than its usual tokens, down to
    # one byte each: room for the longest spelling, the stop token ends it sooner.
    label_tokens = max((len(label.encode()) for label in spec.labels), default=0)
    chunk = Chunk(host, spec, tag, embedder or semantic.Embedder(), label_tokens)
    outcomes: list[Outcome] = []
    waiting: dict[Future[Any], tuple[ItemRun, str]] = {}

    def first(run: ItemRun) -> Future[Any]:
        return ask(chunk, run, None)

    def settle(run: ItemRun, outcome: Outcome) -> None:
        """An item is decided; a document's piece may lead to the next step instead."""
        run.settled = True
        if run.parent is None:
            outcomes.append(outcome)
            return
        more, whole = run.parent.done(run, outcome, first)
        waiting.update({future: (part, "answer") for future, part in more})
        if whole is not None:
            outcomes.append(whole)

    encoded = encode_many(host.tokenizer, spec, [payload for _, _, payload in items])
    for (seq, key, payload), item_encoded in zip(items, encoded, strict=True):
        try:
            chosen = sampling_for(spec, payload)
            try:
                prompt: Prompt | None = build(host.tokenizer, spec, payload,
                                              host.max_model_len, chosen.max_tokens,
                                              item_encoded)
            except PromptTooLong:
                if "document" not in payload:
                    raise
                prompt = None
            if needs_split(payload, prompt, chosen.max_tokens, host.max_model_len):
                document = DocumentRun(seq, key, payload, chosen, spec, host)
                waiting.update({f: (part, "answer") for f, part in document.start(first)})
            elif prompt is not None:
                run = ItemRun(seq, key, payload, chosen, prompt)
                waiting[first(run)] = (run, "answer")
        except REFUSED as exc:
            outcomes.append(Outcome(seq, ItemStatus.FAILED, error=_reason(exc)))
    prepared = time.perf_counter()
    while waiting:
        before = time.perf_counter()
        done, _ = wait(waiting, return_when=FIRST_COMPLETED)
        waited += time.perf_counter() - before
        for future in done:
            run, purpose = waiting.pop(future)
            if run.settled:
                continue  # a sibling request (another judge criterion) already decided it
            refused = future.exception()
            if isinstance(refused, RequestRefused) and purpose == "answer":
                # An attempt like any other that fell short: the ladder goes on, or the
                # item fails with the engine's reason.
                run.last.verdicts.append(Verdict("engine", False,
                                                 reason=f"the engine refused it: {refused}"))
                follow = _retry_or_stop(chunk, run)
                if follow is None:
                    settle(run, run.outcome(spec))
                else:
                    waiting.update({f: (run, p) for f, p in follow})
                continue
            if refused is not None:
                if not isinstance(refused, REFUSED):
                    raise refused
                settle(run, Outcome(run.seq, ItemStatus.FAILED,
                                    error=f"engine refused: {refused}", tries=run.tries))
                continue
            try:
                follow = _advance(chunk, run, purpose, future.result())
            except REFUSED as exc:  # a retry's request was refused
                settle(run, Outcome(run.seq, ItemStatus.FAILED, error=_reason(exc),
                                    tries=run.tries))
                continue
            if follow is None:
                settle(run, run.outcome(spec))
            else:
                waiting.update({f: (run, p) for f, p in follow})
    if timings is not None:
        timings["prepare"] = prepared - started
        timings["checks"] = time.perf_counter() - prepared - waited
    return sorted(outcomes, key=lambda o: o.item_seq)


def _advance(chunk: Chunk, run: ItemRun, purpose: str, result: Any
             ) -> list[tuple[Future[Any], str]] | None:
    """The item's next requests after `result` (none while it waits for others), or None
    when it is decided."""
    spec = chunk.spec
    if purpose.startswith("judge:"):
        output = result.outputs[0]
        run.judge_tokens += len(output.token_ids)
        step = output.logprobs[0] if output.logprobs else {}
        p_yes = label_probabilities(step, semantic.JUDGE_CHOICES,
                                    lambda t: chunk.host.tokenizer.decode([t]),
                                    chosen=output.text.strip())["Yes"]
        run.judge_scores[purpose.removeprefix("judge:")] = semantic.judge_score(p_yes)
        if len(run.judge_scores) < run.judge_asked:
            return []
        run.last.verdicts.append(semantic.judge_verdict(run.judge_scores,
                                                        spec.check("judge") or {}))
        return _retry_or_stop(chunk, run)
    attempt = run.last
    _fill(chunk, run, result)
    answer = Answer(attempt.output, attempt.finish_reason, attempt.completion_tokens,
                    attempt.samples or [], question(run.payload), attempt.label,
                    attempt.probabilities, spec.labels,
                    run.payload.get("json_schema") or spec.json_schema)
    declared = spec.check_list()
    if spec.kind == "classify" and spec.check("label") is None:
        declared = [("label", {}), *declared]  # a classification's answer is always a label
    attempt.verdicts = checks.run(declared, answer)
    if attempt.failed:
        return _retry_or_stop(chunk, run)
    relevance = spec.check("relevance")
    if relevance is not None:
        attempt.verdicts.append(semantic.relevance(chunk.embedder, answer.question,
                                                   attempt.output, relevance))
        if attempt.failed:
            return _retry_or_stop(chunk, run)
    if spec.check("judge") is not None:
        judged = ask_judge(chunk, run)
        if judged:
            return judged
    return _retry_or_stop(chunk, run)


def _retry_or_stop(chunk: Chunk, run: ItemRun) -> list[tuple[Future[Any], str]] | None:
    last = run.last
    if not last.failed or len(run.tries) >= chunk.budget:
        return None
    room = chunk.host.max_model_len - len(run.prompt.token_ids)
    plan = ladder.next_attempt(chunk.spec, last.attempt, last.failed, last.sampling, room)
    last.next_reason = plan.reason
    return [(ask(chunk, run, plan), "answer")]


def _fill(chunk: Chunk, run: ItemRun, result: Any) -> None:
    spec, host, attempt = chunk.spec, chunk.host, run.last
    outputs = result.outputs
    attempt.completion_tokens = sum(len(o.token_ids) for o in outputs)
    attempt.finish_reason = outputs[0].finish_reason
    texts = [o.text for o in outputs]
    if attempt.step == "replace_duplicates":
        # The earlier samples that were distinct stay; the new ones take the others' place.
        earlier = run.tries[-2].samples or []
        limit = (spec.check("distinct") or {}).get("max_similarity", 0.9)
        dups = set(checks.duplicates(earlier, limit))
        texts = [s for i, s in enumerate(earlier) if i not in dups] + texts
    attempt.output = texts[0]
    if len(texts) > 1:
        attempt.samples = texts
    if spec.kind != "classify":
        return
    if attempt.step == "self_consistency":
        votes = Counter(t.strip() for t in texts if t.strip() in spec.labels)
        top = max(votes.values(), default=0)
        tied = [label for label in spec.labels if votes[label] == top and top]
        # A tie goes to the greedy answer's label when it is among the leaders.
        first = run.tries[0].label
        attempt.label = first if first in tied else (tied[0] if tied else None)
        attempt.probabilities = {label: round(votes[label] / len(texts), 6)
                                 for label in spec.labels}
        attempt.output = attempt.label or texts[0]
        return
    label = texts[0].strip()
    attempt.label = label if label in spec.labels else None
    step = outputs[0].logprobs[0] if outputs[0].logprobs else {}
    attempt.probabilities = label_probabilities(
        step, spec.labels, lambda t: host.tokenizer.decode([t]), chosen=label)
    # Greedy decoding takes the likeliest first token, but a label may begin with several
    # ("neg", "negative"), whose mass together can outweigh it: the answer is the label
    # the probabilities put first (measured: "positive" chosen at P 0.497 of two labels).
    best = max(spec.labels, key=attempt.probabilities.__getitem__)
    if attempt.label is not None and attempt.probabilities[best] > attempt.probabilities[
            attempt.label]:
        attempt.label = attempt.output = best


def _reason(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"payload is missing {exc}"
    return str(exc)
