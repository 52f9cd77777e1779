"""The ``outputs`` metric: greedy token ids (and top logprobs) for a fixed prompt set, compared between prefixes.

It is the numerics check a kernel engineer runs first, and unlike gsm8k it says something with
random weights: two prefixes whose engines compute the same numbers produce the same greedy tokens.

:func:`fetch_outputs` asks a running OpenAI-compatible server (``vllm serve``) for each prompt, one at
a time (batch 1, so scheduling cannot change the numbers), with ``temperature 0``, ``ignore_eos`` (a
fixed length), ``logprobs`` (the top-k per position) and ``return_tokens_as_token_ids`` (vLLM then
names every token ``token_id:N``, so ids are read, never re-tokenized). :func:`compare_outputs` is pure:
``identical`` when every prompt's token ids match, else ``differs`` with the first diverging position
per prompt (and the largest top-1 logprob difference up to there, for information).
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from .process import RunnerError

# fixed prompts: plain English and arithmetic, within a 768-token BPE trained on GSM8K
PROMPTS = (
    "Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "Question: Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting.",
    "Answer: The total number of apples is 3 + 5 = 8. The answer is",
    "Question: A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts",
    "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning",
    "Answer: 20 * 3 = 60 and 60 / 4 = 15, so",
    "Question: James writes a 3-page letter to 2 different friends twice a week.",
    "The store sells pencils for $0.25 each and notebooks for $2.",
)
MAX_TOKENS = 8
TOP_LOGPROBS = 5


def _token_id(tok: str) -> int:
    if not tok.startswith("token_id:"):
        raise RunnerError(f"the server named a token {tok!r}, not 'token_id:N'",
                          "is it vLLM (return_tokens_as_token_ids)?")
    return int(tok.split(":", 1)[1])


def parse_completion(doc: dict) -> dict:
    """``{"token_ids": [...], "top_logprobs": [[[id, logprob], ...], ...]}`` of one completions response."""
    try:
        lp = doc["choices"][0]["logprobs"]
        ids = [_token_id(t) for t in lp["tokens"]]
        top = [sorted(([_token_id(t), float(v)] for t, v in (pos or {}).items()), key=lambda x: -x[1])
               for pos in lp.get("top_logprobs") or []]
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise RunnerError(f"completions response without token logprobs ({type(e).__name__}: {e})") from None
    return {"token_ids": ids, "top_logprobs": top}


def fetch_outputs(base_url: str, model: str, *, prompts: tuple[str, ...] = PROMPTS, max_tokens: int = MAX_TOKENS,
                  top_logprobs: int = TOP_LOGPROBS, timeout_s: float = 300) -> list[dict]:
    """Greedy completions of ``prompts`` from the server at ``base_url``, one request at a time."""
    out = []
    for i, p in enumerate(prompts):
        body = {"model": model, "prompt": p, "max_tokens": max_tokens, "temperature": 0.0, "seed": 0,
                "logprobs": top_logprobs, "ignore_eos": True, "return_tokens_as_token_ids": True}
        req = urllib.request.Request(base_url.rstrip("/") + "/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as r:
                doc = json.loads(r.read())
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise RunnerError(f"outputs: prompt {i} failed against {base_url}: {e}") from None
        out.append({"prompt": i, **parse_completion(doc)})
    return out


@dataclass
class OutputsComparison:
    verdict: str                        # identical | differs
    prompts: int
    tokens: int
    diverging: dict[int, int] = field(default_factory=dict)  # prompt -> first position whose token differs
    max_logprob_diff: float = 0.0      # largest |top-1 logprob(a) - top-1 logprob(b)| over agreeing positions

    def describe(self) -> str:
        if self.verdict == "identical":
            return (f"outputs identical ({self.prompts} prompts × {self.tokens} greedy tokens; top-1 logprobs "
                    f"within {self.max_logprob_diff:.2g})")
        where = ", ".join(f"prompt {p} at token {k}" for p, k in sorted(self.diverging.items()))
        return f"outputs differ in {len(self.diverging)} of {self.prompts} prompts: {where}"

    def as_dict(self) -> dict:
        return {"verdict": self.verdict, "prompts": self.prompts, "tokens": self.tokens,
                "diverging": {str(k): v for k, v in self.diverging.items()},
                "max_logprob_diff": self.max_logprob_diff}


def compare_outputs(a: list[dict], b: list[dict]) -> OutputsComparison:
    """Compare two prefixes' outputs for the same prompt set (matched by prompt index)."""
    by_a = {o["prompt"]: o for o in a}
    by_b = {o["prompt"]: o for o in b}
    if set(by_a) != set(by_b):
        raise RunnerError(f"outputs of different prompt sets ({sorted(by_a)} vs {sorted(by_b)})",
                          "measure both prefixes with the same [validate] outputs settings")
    diverging: dict[int, int] = {}
    max_diff = 0.0
    tokens = 0
    for p in sorted(by_a):
        ta, tb = by_a[p]["token_ids"], by_b[p]["token_ids"]
        tokens = max(tokens, len(ta), len(tb))
        n = next((k for k, (x, y) in enumerate(zip(ta, tb, strict=False)) if x != y), None)
        if n is None and len(ta) != len(tb):
            n = min(len(ta), len(tb))
        if n is not None:
            diverging[p] = n
        la, lb = by_a[p].get("top_logprobs") or [], by_b[p].get("top_logprobs") or []
        for k in range(min(len(la), len(lb), n if n is not None else len(ta))):
            if la[k] and lb[k]:
                max_diff = max(max_diff, abs(la[k][0][1] - lb[k][0][1]))
    return OutputsComparison("differs" if diverging else "identical", len(by_a), tokens, diverging, max_diff)
