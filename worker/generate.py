"""Turn a chunk's items into outcomes on the engine host, checking every answer.

Every item's first request goes in at once (the engine batches them with other chunks'
items). As each answer comes back it is checked; one that falls short is asked again at
once, as the retry policy plans it (quality.retries), so a retry joins the running batch and never
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

from quality import checks, retries, semantic
from quality.checks import Answer, Verdict
from quality.retries import Step
from schemas.spec import JobSpec
from schemas.tables import ItemStatus
from worker.attempts import ItemRun, Outcome
from worker.documents import DocumentRun, needs_split
from worker.engine import EngineHost, RequestRefused
from worker.labels import label_probabilities
from worker.prompts import Prompt, PromptTooLong, build, encode_many, question, sampling_for
from worker.requests import ANSWER, ChunkRun, Purpose, ask, ask_judge

# What an item's own request can be refused for: the item fails, its chunk goes on.
REFUSED = (PromptTooLong, KeyError, ValueError, TypeError, VLLMClientError, RequestRefused)

Requests = list[tuple[Future[Any], Purpose]]


def run_items(host: EngineHost, spec: JobSpec, items: list[tuple[int, str, dict[str, Any]]],
              tag: str, *, embedder: semantic.Embedder | None = None,
              timings: dict[str, float] | None = None,
              earlier: dict[int, int] | None = None) -> list[Outcome]:
    """With `timings`, adds the seconds spent outside the engine: preparing requests
    ("prepare"), and checking answers and asking again ("checks"). `earlier`: by item
    seq, the attempts its earlier runs made (a retried item numbers its own after them)."""
    started = time.perf_counter()
    # Sampled decoding may spell a label in smaller pieces than its usual tokens, down to
    # one byte each: room for the longest spelling, the stop token ends it sooner.
    label_tokens = max((len(label.encode()) for label in spec.labels), default=0)
    batch = Batch(ChunkRun(host, spec, tag, embedder or semantic.Embedder(), label_tokens,
                           earlier or {}))
    batch.prepare(items)
    prepared = time.perf_counter()
    waited = batch.drain()
    if timings is not None:
        timings["prepare"] = prepared - started
        timings["checks"] = time.perf_counter() - prepared - waited
    return sorted(batch.outcomes, key=lambda o: o.item_seq)


class Batch:
    """A run's items in flight: the requests awaiting answers, and the outcomes decided."""

    def __init__(self, chunk: ChunkRun) -> None:
        self.chunk = chunk
        self.outcomes: list[Outcome] = []
        self.waiting: dict[Future[Any], tuple[ItemRun, Purpose]] = {}

    def prepare(self, items: list[tuple[int, str, dict[str, Any]]]) -> None:
        """Every item's first request, at once, in the order of their prompts' text and
        with no other chunk's requests between them: prompts that share a beginning
        reach the engine together, and its prefix cache computes that beginning once.
        An item that cannot be asked fails alone."""
        host, spec = self.chunk.host, self.chunk.spec
        encoded = encode_many(host.tokenizer, spec, [payload for _, _, payload in items])
        ordered = sorted(zip(items, encoded, strict=True),
                         key=lambda pair: pair[1][0] if pair[1] is not None else "")
        with host.together():
            for (seq, key, payload), item_encoded in ordered:
                try:
                    self._start(seq, key, payload, item_encoded)
                except REFUSED as exc:
                    self.outcomes.append(Outcome(seq, ItemStatus.FAILED, error=_reason(exc)))

    def _start(self, seq: int, key: str, payload: dict[str, Any], encoded: Any) -> None:
        host, spec = self.chunk.host, self.chunk.spec
        chosen = sampling_for(spec, payload)
        try:
            prompt: Prompt | None = build(host.tokenizer, spec, payload, host.max_model_len,
                                          chosen.max_tokens, encoded=encoded)
        except PromptTooLong:
            if "document" not in payload:
                raise
            prompt = None
        if needs_split(payload, prompt, chosen.max_tokens, host.max_model_len):
            document = DocumentRun(seq, key, payload, chosen, spec, host,
                                   earlier=self.chunk.earlier.get(seq, 0))
            self.waiting.update({f: (part, ANSWER) for f, part in document.start(self.first)})
        elif prompt is not None:
            run = ItemRun(seq, key, payload, chosen, prompt,
                          earlier=self.chunk.earlier.get(seq, 0))
            self.waiting[self.first(run)] = (run, ANSWER)

    def first(self, run: ItemRun) -> Future[Any]:
        return ask(self.chunk, run, None)

    def drain(self) -> float:
        """Take answers as they come until every item is decided; returns the seconds spent
        waiting for the engine."""
        waited = 0.0
        while self.waiting:
            before = time.perf_counter()
            done, _ = wait(self.waiting, return_when=FIRST_COMPLETED)
            waited += time.perf_counter() - before
            for future in done:
                run, purpose = self.waiting.pop(future)
                if not run.settled:  # else a sibling request (another criterion) decided it
                    self._answered(run, purpose, future)
        return waited

    def _answered(self, run: ItemRun, purpose: Purpose, future: Future[Any]) -> None:
        """One request came back: the item's next requests, or its outcome."""
        refused = future.exception()
        if isinstance(refused, RequestRefused) and not purpose.judging:
            # An attempt like any other that fell short: the policy may ask again, or the
            # item fails with the engine's reason.
            run.last.verdicts.append(Verdict("engine", False,
                                             reason=f"the engine refused it: {refused}"))
            self._follow(run, _retry_or_stop(self.chunk, run))
        elif refused is not None:
            if not isinstance(refused, REFUSED):
                raise refused
            self.settle(run, Outcome(run.seq, ItemStatus.FAILED,
                                     error=f"engine refused: {refused}", tries=run.tries))
        else:
            try:
                follow = _advance(self.chunk, run, purpose, future.result())
            except REFUSED as exc:  # a retry's request was refused
                self.settle(run, Outcome(run.seq, ItemStatus.FAILED, error=_reason(exc),
                                         tries=run.tries))
                return
            self._follow(run, follow)

    def _follow(self, run: ItemRun, follow: Requests | None) -> None:
        if follow is None:
            self.settle(run, run.outcome(self.chunk.spec))
        else:
            self.waiting.update({f: (run, p) for f, p in follow})

    def settle(self, run: ItemRun, outcome: Outcome) -> None:
        """An item is decided; a document's piece may lead to the next step instead."""
        run.settled = True
        if run.parent is None:
            self.outcomes.append(outcome)
            return
        more, whole = run.parent.done(run, outcome, self.first)
        self.waiting.update({future: (part, ANSWER) for future, part in more})
        if whole is not None:
            self.outcomes.append(whole)


def _advance(chunk: ChunkRun, run: ItemRun, purpose: Purpose, result: Any) -> Requests | None:
    """The item's next requests after `result` (none while it waits for others), or None
    when it is decided."""
    spec = chunk.spec
    if purpose.criterion is not None:
        output = result.outputs[0]
        run.judge_tokens += len(output.token_ids)
        step = output.logprobs[0] if output.logprobs else {}
        p_yes = label_probabilities(step, semantic.JUDGE_CHOICES,
                                    lambda t: chunk.host.tokenizer.decode([t]),
                                    chosen=output.text.strip())["Yes"]
        run.judge_scores[purpose.criterion] = semantic.judge_score(p_yes)
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


def _retry_or_stop(chunk: ChunkRun, run: ItemRun) -> Requests | None:
    """The item's next answer as the retry policy plans it, or None: it is decided."""
    room = chunk.host.max_model_len - len(run.prompt.token_ids)
    plan = retries.decide(chunk.spec, run.last, answered=len(run.tries), room=room)
    if plan is None:
        return None
    run.last.next_reason = plan.reason
    return [(ask(chunk, run, plan), ANSWER)]


def _fill(chunk: ChunkRun, run: ItemRun, result: Any) -> None:
    spec, host, attempt = chunk.spec, chunk.host, run.last
    outputs = result.outputs
    attempt.completion_tokens = sum(len(o.token_ids) for o in outputs)
    attempt.finish_reason = outputs[0].finish_reason
    texts = [o.text for o in outputs]
    if attempt.step == Step.REPLACE_DUPLICATES:
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
    if attempt.step == Step.SELF_CONSISTENCY:
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
