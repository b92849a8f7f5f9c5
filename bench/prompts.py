"""The benchmark's prompt files: OpenAI batch chat requests, greedy, bounded length."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

SUBJECTS = ["the ocean", "a bicycle", "the moon", "coffee", "a library", "volcanoes",
            "honey bees", "the internet", "a lighthouse", "winter", "chess", "bread",
            "electric cars", "a rainforest", "the piano", "recycling"]
ASKS = ["Explain {s} to a child.", "Write a short poem about {s}.",
        "Give three facts about {s}.", "Describe {s} in a paragraph.",
        "What is the history of {s}?", "List pros and cons of {s}.",
        "Write a short story that involves {s}.", "Why do people like {s}?"]


def make_batch_file(path: Path, n: int = 256, max_tokens: int = 128, *,
                    duplicates: float = 0.0) -> Path:
    """`n` requests, all different unless a `duplicates` share of them repeats an earlier
    one's body (under an id of its own; which ones is seeded)."""
    distinct = n - round(n * duplicates)
    bodies = [{"model": "smollm2-135m-instruct", "max_tokens": max_tokens, "temperature": 0,
               "messages": [{"role": "user", "content": _ask(i)}]} for i in range(distinct)]
    rng = random.Random(0)
    if distinct < n:
        bodies += [rng.choice(bodies) for _ in range(n - distinct)]
        rng.shuffle(bodies)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for i, body in enumerate(bodies):
            fh.write(json.dumps({"custom_id": f"bench-{i}", "method": "POST",
                                 "url": "/v1/chat/completions", "body": body}) + "\n")
    return path


def _ask(i: int) -> str:
    ask = ASKS[i % len(ASKS)].format(s=SUBJECTS[(i // len(ASKS)) % len(SUBJECTS)])
    rounds = i // (len(ASKS) * len(SUBJECTS))  # past every pairing: asked another way
    return ask if rounds == 0 else f"{ask} Answer in at most {rounds + 1} sentences."


def read_chat_requests(path: str | Path) -> tuple[list[list[dict[str, Any]]], int]:
    conversations, max_tokens = [], 0
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            body = json.loads(line)["body"]
            conversations.append(body["messages"])
            max_tokens = max(max_tokens, body.get("max_tokens") or
                             body.get("max_completion_tokens") or 128)
    return conversations, max_tokens


# The shared-prefix workload: documents asked several short questions each.
PARTIES = ["the Tenant", "the Landlord", "the Supplier", "the Buyer", "the Contractor",
           "the Agent", "the Licensee", "the Carrier"]
DUTIES = ["pay the monthly fee", "insure the premises", "deliver the goods",
          "keep the records", "repair the roof", "notify the other party", "return the keys",
          "maintain the equipment", "pay the deposit", "file the annual report"]
PLACES = ["Leeds", "Porto", "Lyon", "Graz", "Turku", "Ghent", "Bergen", "Cork", "Brno"]
QUESTIONS = ["Who are the parties to this agreement?", "When does the agreement begin?",
             "What must the Tenant pay, and when?", "Which city's courts decide disputes?",
             "How can the agreement be ended early?", "Who must insure the premises?",
             "What happens if a payment is late?", "Who keeps the records?",
             "What notice must be given before ending it?", "Who repairs the roof?",
             "What deposit is required?", "Summarize the agreement in one sentence."]


def make_shared_prefix_file(path: Path, tokenizer: Any, *, documents: int = 12,
                            seed: int = 7, max_tokens: int = 32) -> tuple[Path, int]:
    """Seeded documents of 800 to 1,500 tokens, each asked 8 to 12 of QUESTIONS, in
    question order (every document's first question, then every second one, as files
    usually come). Returns the file and the documents' tokens in all (the job's distinct
    prefix tokens)."""
    rng = random.Random(seed)
    texts = [_document(rng, d, tokenizer, rng.randint(800, 1500)) for d in range(documents)]
    asked = [rng.randint(8, 12) for _ in texts]
    prefix_tokens = sum(len(tokenizer(text)["input_ids"]) for text in texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for q in range(max(asked)):
            for d, text in enumerate(texts):
                if q < asked[d]:
                    body = {"model": "smollm2-135m-instruct", "max_tokens": max_tokens,
                            "temperature": 0, "messages": [{"role": "user", "content":
                                f"{text}\n\nQuestion: {QUESTIONS[q]} Answer briefly."}]}
                    fh.write(json.dumps({"custom_id": f"doc{d}-q{q}", "method": "POST",
                                         "url": "/v1/chat/completions", "body": body}) + "\n")
    return path, prefix_tokens


def _document(rng: random.Random, number: int, tokenizer: Any, tokens: int) -> str:
    first, second = rng.sample(PARTIES, 2)
    sentences = [f"Agreement {number} between {first} and {second}, signed in "
                 f"{rng.choice(PLACES)} on {rng.randint(1, 28)} March {rng.randint(1990, 2026)}."]
    clause = 1
    while len(tokenizer(" ".join(sentences))["input_ids"]) < tokens:
        party = rng.choice(PARTIES)
        sentences.append(f"Clause {clause}. {party[0].upper()}{party[1:]} shall "
                         f"{rng.choice(DUTIES)} "
                         f"within {rng.randint(2, 90)} days, at a cost of "
                         f"{rng.randint(100, 9000)} euros, failing which "
                         f"{rng.choice(PARTIES)} may {rng.choice(DUTIES)} instead.")
        clause += 1
    return " ".join(sentences)
