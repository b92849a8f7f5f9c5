"""A document longer than the model's context: split, answered piece by piece, combined.

The pieces are ordinary items to the retry loop (checked, retried, in the same running
batch); this module decides what follows when they are done. Map-reduce combines the
pieces' answers into one, in groups that fit the context and again over the groups'
answers until one is left; the combining steps are checked like any answer. A piece that
fails is left out of the combination, and the document's result says so. Per-piece
keeps every piece's answer. A classification averages its pieces' label probabilities,
weighted by their length.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from quality import checks
from quality.checks import Answer
from quality.metrics import reference_metrics
from quality.retries import Step
from schemas.render import render
from schemas.spec import JobSpec, Sampling
from schemas.tables import ItemStatus
from worker.attempts import ItemRun, Outcome, Try, judgement
from worker.prompts import Prompt, PromptTooLong, build, document_fields
from worker.split import split

# Tokens kept free of every piece's budget: re-tokenizing a piece can differ at its edges.
MARGIN = 8

REDUCE_TEMPLATE = """\
The request below was run on each part of one long document, in order. These are the \
answers for the parts.

Request:
{{ request }}

{% for part in parts %}Part {{ loop.index }}:
{{ part }}

{% endfor %}Combine them into one answer to the request, as if the whole document had \
been read at once."""

Ask = Callable[[ItemRun], Future[Any]]


def needs_split(payload: dict[str, Any], prompt: Prompt | None, max_tokens: int,
                max_model_len: int) -> bool:
    """A document whose prompt and answer budget do not fit the context."""
    if "text" not in payload or "document" not in payload:
        return False
    return prompt is None or len(prompt.token_ids) + max_tokens > max_model_len


@dataclass
class DocumentRun:
    seq: int
    key: str
    payload: dict[str, Any]
    chosen: Sampling
    spec: JobSpec
    host: Any
    parts: dict[int, tuple[str, Outcome, dict[str, Any]]] = field(default_factory=dict)
    pending: set[int] = field(default_factory=set)
    tries: list[Try] = field(default_factory=list)
    map_count: int = 0
    next_number: int = 1
    # The parts the next combining step takes: the map pieces, then each level's groups.
    level: list[int] = field(default_factory=list)
    final: ItemRun | None = None
    # The attempts earlier runs of the document made (nightshift retry).
    earlier: int = 0

    def fields(self, text: str) -> dict[str, Any]:
        return {"path": self.key, **document_fields(self.payload, text=text)}

    def _run(self, piece: int, prompt_text: str) -> ItemRun:
        payload = {"prompt": prompt_text}
        prompt = build(self.host.tokenizer, self.spec, payload, self.host.max_model_len,
                       self.chosen.max_tokens)
        return ItemRun(self.seq, f"{self.key}#{piece}", payload, self.chosen, prompt,
                       parent=self, piece=piece, earlier=self.earlier)

    def start(self, ask: Ask) -> list[tuple[Future[Any], ItemRun]]:
        """The map step: every piece asked at once."""
        template = self.spec.template or "{{ text }}"
        empty = build(self.host.tokenizer, self.spec, {"prompt": render(template,
                                                                         self.fields(""))},
                      self.host.max_model_len, self.chosen.max_tokens)
        budget = (self.host.max_model_len - len(empty.token_ids) - self.chosen.max_tokens
                  - MARGIN)
        if budget < 64:
            raise PromptTooLong(
                f"the template and max_tokens {self.chosen.max_tokens} leave {budget} tokens "
                f"of the {self.host.max_model_len}-token context for the document's text")
        overlap = min(self.spec.overlap, budget // 2 - 1)
        pieces = split(str(self.payload["text"]), self.host.tokenizer, budget, overlap=overlap)
        if not pieces:
            raise ValueError("the document's text is only whitespace")
        self.map_count = len(pieces)
        self.next_number = len(pieces) + 1
        self.level = [p.index + 1 for p in pieces]
        asked = []
        for piece in pieces:
            run = self._run(piece.index + 1, render(template, self.fields(piece.text)))
            self.pending.add(run.piece)
            self.parts[run.piece] = ("map", Outcome(self.seq, ItemStatus.RUNNING),
                                     {"start_char": piece.start, "end_char": piece.end,
                                      "inputs": None})
            asked.append((ask(run), run))
        return asked

    def done(self, run: ItemRun, outcome: Outcome, ask: Ask
             ) -> tuple[list[tuple[Future[Any], ItemRun]], Outcome | None]:
        """Record one part's outcome; what to ask next, or the document's outcome."""
        self.tries += outcome.tries
        kind, _, where = self.parts[run.piece]
        self.parts[run.piece] = (kind, outcome, where)
        if run is self.final:
            return [], self._finish(outcome)
        self.pending.discard(run.piece)
        if self.pending:
            return [], None
        mapped = list(range(1, self.map_count + 1))
        if self.spec.kind == "classify":
            return [], self._classified(mapped)
        if self.spec.split == "per_piece":
            return [], self._per_piece(mapped)
        return self._reduce(ask)

    def _reduce(self, ask: Ask) -> tuple[list[tuple[Future[Any], ItemRun]], Outcome | None]:
        """Combine the current level's answers (the failed ones are left out) in groups."""
        good = [n for n in self.level if self.parts[n][1].status == ItemStatus.SUCCEEDED]
        if not good:
            return [], self._all_failed()
        template = self.spec.reduce_template or REDUCE_TEMPLATE
        request = render(self.spec.template or "{{ text }}", self.fields("[the document]"))
        groups = self._groups(good, template, request)
        asked, self.level = [], []
        for group in groups:
            texts = [self.parts[n][1].output or "" for n in group]
            number = 0 if len(groups) == 1 else self.next_number
            run = self._run(number, render(template, {**self.fields(""), "request": request,
                                                      "parts": texts}))
            self.parts[number] = ("reduce", Outcome(self.seq, ItemStatus.RUNNING),
                                  {"start_char": None, "end_char": None, "inputs": group})
            if number == 0:
                self.final = run
            else:
                self.next_number += 1
                self.level.append(number)
                self.pending.add(number)
            asked.append((ask(run), run))
        return asked, None

    def _groups(self, parts: list[int], template: str, request: str) -> list[list[int]]:
        """Consecutive parts whose answers fit one combining prompt; at least two per group
        (an answer longer than half the room is cut), so every level shrinks."""
        tok = self.host.tokenizer
        empty = render(template, {**self.fields(""), "request": request, "parts": []})
        room = (self.host.max_model_len - len(tok.encode(empty)) - self.chosen.max_tokens
                - MARGIN * 4)
        cap = max(room // 2, 16)
        groups: list[list[int]] = [[]]
        used = 0
        for n in parts:
            outcome = self.parts[n][1]
            ids = tok.encode(outcome.output or "", add_special_tokens=False)
            if len(ids) > cap:
                outcome.output = tok.decode(ids[:cap])
                ids = ids[:cap]
            cost = len(ids) + 8  # the "Part k:" line and spacing
            if groups[-1] and used + cost > room:
                groups.append([])
                used = 0
            groups[-1].append(n)
            used += cost
        return groups

    def _row(self, n: int) -> dict[str, Any]:
        kind, o, where = self.parts[n]
        return {"piece": n, "kind": kind, **where, "status": o.status, "output": o.output,
                "label": o.label, "probabilities": o.probabilities, "quality": o.quality,
                "checks": o.checks, "attempts": o.attempts, "error": o.error,
                "finish_reason": o.finish_reason, "prompt_tokens": o.prompt_tokens,
                "completion_tokens": o.completion_tokens}

    def _failed_note(self) -> str | None:
        failed = [n for n in range(1, self.map_count + 1)
                  if self.parts[n][1].status != ItemStatus.SUCCEEDED]
        if not failed:
            return None
        first = self.parts[failed[0]][1].error or "failed"
        return (f"{len(failed)} of {self.map_count} pieces failed and were left out "
                f"(pieces {', '.join(map(str, failed))}; piece {failed[0]}: {first})")

    def _complete(self, outcome: Outcome) -> Outcome:
        outcome.item_seq = self.seq
        outcome.pieces = self.map_count
        outcome.tries = self.tries
        outcome.parts = [self._row(n) for n in sorted(self.parts)]
        outcome.prompt_tokens = sum(t.prompt_tokens for t in self.tries)
        outcome.completion_tokens = sum(t.completion_tokens for t in self.tries)
        outcome.metrics = reference_metrics(self.spec.kind, outcome.output, outcome.label,
                                            self.payload.get("reference"))
        return outcome

    def _finish(self, outcome: Outcome) -> Outcome:
        note = self._failed_note()
        if note:
            outcome.error = f"{outcome.error}; {note}" if outcome.error else note
        return self._complete(outcome)

    def _all_failed(self) -> Outcome:
        return self._complete(Outcome(self.seq, ItemStatus.FAILED,
                                      error=f"every piece failed: {self._failed_note()}"))

    def _per_piece(self, mapped: list[int]) -> Outcome:
        outcomes = [self.parts[n][1] for n in mapped]
        ok = [o for o in outcomes if o.status == ItemStatus.SUCCEEDED]
        qualities = {o.quality for o in outcomes}
        outcome = Outcome(
            self.seq, ItemStatus.SUCCEEDED if len(ok) == len(outcomes) else ItemStatus.FAILED,
            output="\n\n".join(o.output or "" for o in ok) or None,
            quality=None if qualities == {None} else (
                "passed" if qualities == {"passed"} else "failed"),
            attempts=max(o.attempts for o in outcomes), error=self._failed_note())
        return self._complete(outcome)

    def _classified(self, mapped: list[int]) -> Outcome:
        weights = {n: max((self.parts[n][2]["end_char"] or 0) - (self.parts[n][2]["start_char"]
                                                                  or 0), 1) for n in mapped}
        voted = [n for n in mapped if self.parts[n][1].probabilities]
        if not voted:
            return self._all_failed()
        total = sum(weights[n] for n in voted)
        probs = {label: round(sum(weights[n] * (self.parts[n][1].probabilities or {})
                                  .get(label, 0.0) for n in voted) / total, 6)
                 for label in self.spec.labels}
        label = max(probs, key=lambda k: probs[k])
        verdicts = checks.run(self.spec.check_list(), Answer(
            label, label=label, probabilities=probs, labels=self.spec.labels))
        aggregate = Try(self.earlier + 1, Step.AGGREGATE, "", {}, 0, output=label, label=label,
                        probabilities=probs, verdicts=verdicts)
        quality, status, error = judgement(self.spec, aggregate)
        note = self._failed_note()
        return self._complete(Outcome(
            self.seq, status, output=label, label=label, probabilities=probs,
            quality=quality, checks=[v.as_dict() for v in verdicts] if self.spec.checks
            else None, error="; ".join(x for x in (error, note) if x) or None,
            attempts=max(self.parts[n][1].attempts for n in mapped)))
