"""(a) vLLM offline: `LLM.chat` over the whole prompt set in one call. Prints JSON."""

from __future__ import annotations

import argparse
import json
import time

from bench.prompts import read_chat_requests


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--input", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--engine", default="{}", help="engine kwargs as JSON")
    args = parser.parse_args()
    from vllm import LLM, SamplingParams

    conversations, max_tokens = read_chat_requests(args.input)
    start = time.perf_counter()
    llm = LLM(model=args.model, **json.loads(args.engine))
    started = time.perf_counter()
    outputs = llm.chat(conversations, SamplingParams(max_tokens=max_tokens, temperature=0.0),
                       use_tqdm=False)
    done = time.perf_counter()
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    prompt = sum(len(o.prompt_token_ids) for o in outputs)
    cached = sum(o.num_cached_tokens or 0 for o in outputs)  # the engine's own count
    print("BENCH " + json.dumps({"start_s": started - start, "gen_s": done - started,
                                 "tokens": tokens, "requests": len(outputs),
                                 "prompt_tokens": prompt, "cached_tokens": cached}))


if __name__ == "__main__":
    main()
