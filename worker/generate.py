"""Turn a chunk's items into outcomes on the engine host: one bad item fails alone."""

from __future__ import annotations

import uuid
from concurrent.futures import Future, as_completed
from dataclasses import dataclass, field
from typing import Any

from schemas.spec import JobSpec, Sampling
from schemas.tables import ItemStatus
from worker.engine import EngineHost
from worker.labels import label_probabilities
from worker.prompts import Prompt, PromptTooLong, build, item_seed, sampling_for

LABEL_LOGPROBS = 20


@dataclass
class Outcome:
    """What becomes one row of `results`."""

    item_seq: int
    status: str
    output: str | None = None
    label: str | None = None
    probabilities: dict[str, float] | None = None
    samples: list[str] | None = None
    error: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt: str | None = None
    sampling: dict[str, Any] = field(default_factory=dict)

    def row(self, job_id: str, worker: str) -> dict[str, Any]:
        return {"job_id": job_id, "worker": worker, "attempts": 1, **self.__dict__}


def sampling_params(spec: JobSpec, chosen: Sampling, key: str, prompt: Prompt,
                    label_tokens: int) -> tuple[Any, dict[str, Any]]:
    """vLLM parameters for one item, and what of them the result records."""
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    seed = item_seed(chosen.seed, key)
    if spec.kind == "classify":
        # Greedy over the constrained label set; the probabilities come from the first step.
        kwargs: dict[str, Any] = dict(
            temperature=0.0, max_tokens=label_tokens + 2, seed=seed, logprobs=LABEL_LOGPROBS,
            structured_outputs=StructuredOutputsParams(choice=spec.labels))
        recorded = {"temperature": 0.0, "seed": seed, "labels": spec.labels}
    else:
        kwargs = dict(temperature=chosen.temperature, top_p=chosen.top_p,
                      max_tokens=min(chosen.max_tokens, prompt.max_tokens), seed=seed,
                      n=chosen.n, stop=chosen.stop, presence_penalty=chosen.presence_penalty,
                      frequency_penalty=chosen.frequency_penalty)
        recorded = {k: v for k, v in kwargs.items() if v is not None}
        if spec.json_schema is not None:
            kwargs["structured_outputs"] = StructuredOutputsParams(json=spec.json_schema)
            recorded["json_schema"] = True
    return SamplingParams(**kwargs), recorded


def run_items(host: EngineHost, spec: JobSpec, items: list[tuple[int, str, dict[str, Any]]],
              tag: str) -> list[Outcome]:
    """Submit every item at once (the engine batches them with other chunks' items)."""
    outcomes: list[Outcome] = []
    waiting: dict[Future[Any], Outcome] = {}
    label_tokens = max((len(host.tokenizer.encode(label, add_special_tokens=False))
                        for label in spec.labels), default=0)
    for seq, key, payload in items:
        try:
            chosen = sampling_for(spec, payload)
            prompt = build(host.tokenizer, spec, payload, host.max_model_len, chosen.max_tokens)
            params, recorded = sampling_params(spec, chosen, key, prompt, label_tokens)
        except (PromptTooLong, KeyError, ValueError, TypeError) as exc:
            outcomes.append(Outcome(seq, ItemStatus.FAILED, error=_reason(exc)))
            continue
        request_id = f"{tag}:{seq}:{uuid.uuid4().hex[:8]}"
        future = host.submit(request_id, prompt.token_ids, params)
        waiting[future] = Outcome(seq, ItemStatus.RUNNING, prompt=prompt.text,
                                  prompt_tokens=len(prompt.token_ids), sampling=recorded)
    for future in as_completed(waiting):
        outcome = waiting[future]
        refused = future.exception()
        if refused is not None:
            if not isinstance(refused, (ValueError, TypeError)):
                raise refused
            outcome.status, outcome.error = ItemStatus.FAILED, f"engine refused: {refused}"
        else:
            _fill(outcome, future.result(), spec, host)
        outcomes.append(outcome)
    return sorted(outcomes, key=lambda o: o.item_seq)


def _fill(outcome: Outcome, result: Any, spec: JobSpec, host: EngineHost) -> None:
    first = result.outputs[0]
    outcome.output = first.text
    outcome.finish_reason = first.finish_reason
    outcome.completion_tokens = sum(len(o.token_ids) for o in result.outputs)
    outcome.status = ItemStatus.SUCCEEDED
    if len(result.outputs) > 1:
        outcome.samples = [o.text for o in result.outputs]
    if spec.kind == "classify":
        label = first.text.strip()
        outcome.label = label if label in spec.labels else None
        step = first.logprobs[0] if first.logprobs else {}
        outcome.probabilities = label_probabilities(
            step, spec.labels, lambda t: host.tokenizer.decode([t]), chosen=label)
        if outcome.label is None:
            outcome.status = ItemStatus.FAILED
            outcome.error = f"the model's answer {first.text!r} is not one of the labels"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"payload is missing {exc}"
    return str(exc)
