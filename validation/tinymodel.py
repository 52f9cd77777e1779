"""Small stand-ins for a real model, for tests that must run end to end on a CPU box.

Two of them, for two questions:

* :func:`build_tiny_model` — a real Hugging Face checkpoint (2-layer Llama, ~200k parameters, a
  byte-level BPE tokenizer trained on the fly on GSM8K text), loadable fully offline.  It proves the
  plumbing (``lm-eval --model hf`` on a local directory, ``vllm bench serve --tokenizer DIR``); its
  gsm8k accuracy is ~0, so it cannot show an accuracy *drop*.  :func:`corrupt_model` perturbs its
  weights (a "broken build" whose generations differ).

* the **oracle server** (``python -m vpatch.validation.tinymodel serve --port N``) — an
  OpenAI-compatible completions server that answers GSM8K test questions *correctly* from
  ``test.jsonl``, except for a deterministic fraction of questions it answers wrongly when corrupted
  (``--corrupt-frac`` or env ``VPATCH_TINY_CORRUPT_FRAC``).  Through real lm-eval
  (``local-completions``) that gives accuracy 1.0 vs. a known, per-question drop: what a gsm8k
  bisect test needs.  It also streams any other prompt token by token with a set TTFT/TPOT
  (``--ttft-ms/--tpot-ms``, env ``VPATCH_TINY_TPOT_MS`` for a "slower build"), so ``vllm bench
  serve`` can measure it, and it serves ``/health`` (503 until ``--ready-delay-s`` has passed) like
  ``vllm serve``.  Environment variables are read at start, like an entry's gate.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# GSM8K (openai/grade-school-math, MIT licence beside the files) ships with vpatch: no hub, no sibling folder.
DEFAULT_DATA = Path(__file__).resolve().parent / "data" / "gsm8k"
SPECIAL = ["<|endoftext|>", "<pad>"]


def default_data_dir() -> Path:
    """GSM8K's folder: $VPATCH_GSM8K_DIR, else the copy shipped in ``validation/data/gsm8k``."""
    return Path(os.environ.get("VPATCH_GSM8K_DIR", DEFAULT_DATA))


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# --- the tiny Hugging Face model -------------------------------------------------------------------

def build_tokenizer(out_dir: Path, data_dir: Path | None = None, vocab_size: int = 768, n_texts: int = 3000):
    """Train a byte-level BPE tokenizer on GSM8K train text and save it as a fast HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    data_dir = Path(data_dir or default_data_dir())
    rows = read_jsonl(data_dir / "train.jsonl")[:n_texts]
    texts = [f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in rows]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>",
        pad_token="<pad>", model_max_length=4096,
    )
    fast.save_pretrained(out_dir)
    return fast


def build_tiny_model(out_dir: Path | str, seed: int = 0, *, data_dir: Path | None = None, hidden: int = 64,
                     layers: int = 2, vocab_size: int = 768) -> Path:
    """Write a 2-layer Llama (~200k parameters) and its tokenizer to ``out_dir``; returns ``out_dir``.

    Deterministic for a given ``seed``.  Load it with ``local_files_only=True`` (no hub).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out_dir, data_dir, vocab_size=vocab_size)
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False, torch_dtype="float32",
    )  # type: ignore[call-arg]
    model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def build_tiny_moe(out_dir: Path | str, seed: int = 0, *, data_dir: Path | None = None, hidden: int = 128,
                   layers: int = 4, experts: int = 16, top_k: int = 4, vocab_size: int = 768) -> Path:
    """A seeded random-weight Qwen3-MoE (router, top-k, experts: the code the series touches) in float32.

    hidden 128, 4 layers, 16 experts, top-4, the tokenizer :func:`build_tokenizer` trains (vocab 768):
    about 2 M parameters. vLLM's CPU build serves it (``vllm serve DIR --dtype float32``); its fused-MoE
    path is vLLM's own. Deterministic for a seed; written with ``local_files_only`` loaders in mind (no hub).
    """
    import torch
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out_dir, data_dir, vocab_size=vocab_size)
    torch.manual_seed(seed)
    cfg = Qwen3MoeConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, moe_intermediate_size=hidden // 2,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4,  # type: ignore[call-arg]
        num_experts=experts, num_experts_per_tok=top_k, decoder_sparse_step=1, norm_topk_prob=True,
        mlp_only_layers=[], max_position_embeddings=2048, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False,
    )
    model = Qwen3MoeForCausalLM(cfg).to(torch.float32)  # type: ignore[arg-type]
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


TINY_MODELS = {"llama": build_tiny_model, "qwen3-moe": build_tiny_moe}


def ensure_tiny_model(kind: str, cache: Path, seed: int = 0, data_dir: Path | None = None) -> Path:
    """``cache/<kind>-seed<seed>``, built once (the directory appears only when complete)."""
    import shutil

    if kind not in TINY_MODELS:
        raise ValueError(f"unknown tiny model {kind!r} (known: {', '.join(TINY_MODELS)})")
    out = Path(cache) / f"{kind}-seed{seed}"
    if (out / "config.json").exists():
        return out
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    TINY_MODELS[kind](tmp, seed=seed, data_dir=data_dir)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def corrupt_model(src: Path | str, dst: Path | str, *, scale: float = 0.5, seed: int = 1) -> Path:
    """Copy the model at ``src`` to ``dst`` with Gaussian noise (``scale`` × each tensor's std) on every weight."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    src, dst = Path(src), Path(dst)
    shutil.copytree(src, dst, dirs_exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(src, local_files_only=True)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            std = float(p.std()) if p.numel() > 1 else 1.0
            p.add_(torch.randn(p.shape, generator=g) * (scale * (std or 1.0)))
    model.save_pretrained(dst, safe_serialization=True)
    return dst


def count_parameters(model_dir: Path | str) -> int:
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    return sum(p.numel() for p in m.parameters())


# --- the oracle server ------------------------------------------------------------------------------

def question_of(prompt: str) -> str | None:
    """The last ``Question: ...\nAnswer:`` of a (few-shot) gsm8k prompt, or None."""
    i = prompt.rfind("Question: ")
    if i < 0:
        return None
    rest = prompt[i + len("Question: "):].rstrip()
    if not rest.endswith("\nAnswer:"):
        return None
    return rest[: -len("\nAnswer:")].strip()

_FINAL_RE = re.compile(r"#### (-?[0-9.,]+)")


def is_corrupted(question: str, frac: float, seed: int = 0) -> bool:
    """Whether the oracle answers ``question`` wrongly at corruption ``frac`` (deterministic; monotone in frac)."""
    if frac <= 0:
        return False
    h = int.from_bytes(hashlib.sha256(f"{seed}\x1f{question}".encode()).digest()[:8], "big") / 2**64
    return h < frac


def corrupted_indices(test_rows: list[dict], frac: float, seed: int = 0, limit: int | None = None) -> set[int]:
    """Indices (doc ids in test.jsonl order) that the oracle answers wrongly."""
    rows = test_rows[:limit] if limit else test_rows
    return {i for i, r in enumerate(rows) if is_corrupted(r["question"], frac, seed)}


def wrong_answer(answer: str) -> str:
    def bump(m: re.Match) -> str:
        num = m.group(1).replace(",", "")
        try:
            v = int(float(num)) + 1
        except ValueError:
            v = 1
        return f"#### {v}"

    return _FINAL_RE.sub(bump, answer)


class Oracle:
    def __init__(self, data_dir: Path, corrupt_frac: float, corrupt_seed: int, ttft_ms: float, tpot_ms: float,
                 ready_delay_s: float, model_name: str):
        rows = read_jsonl(Path(data_dir) / "test.jsonl")
        self.answers = {r["question"].strip(): r["answer"] for r in rows}
        self.corrupt_frac = corrupt_frac
        self.corrupt_seed = corrupt_seed
        self.ttft_s = ttft_ms / 1000.0
        self.tpot_s = tpot_ms / 1000.0
        self.ready_at = time.monotonic() + ready_delay_s
        self.model_name = model_name
        self.requests = 0
        self.lock = threading.Lock()

    def answer(self, prompt: str) -> str | None:
        q = question_of(prompt)
        if q is None:
            return None
        ans = self.answers.get(q)
        if ans is None:
            return None
        if is_corrupted(q, self.corrupt_frac, self.corrupt_seed):
            return wrong_answer(ans)
        return ans


def _make_handler(oracle: Oracle):
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # each SSE chunk leaves at once (else ~40 ms delayed-ACK stalls)

        def log_message(self, fmt, *args):  # quiet: one line per request is noise in logs
            pass

        def _json(self, code: int, obj: object) -> None:
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802
            if self.path == "/health":
                if time.monotonic() < oracle.ready_at:
                    return self._json(503, {"status": "loading"})
                return self._json(200, {})
            if self.path == "/v1/models":
                return self._json(200, {"object": "list", "data": [{"id": oracle.model_name, "object": "model",
                                                                    "root": oracle.model_name}]})
            return self._json(404, {"error": "not found"})

        def do_POST(self):  # noqa: N802
            n = int(self.headers.get("Content-Length") or 0)
            try:
                req = json.loads(self.rfile.read(n) or b"{}")
            except ValueError:
                return self._json(400, {"error": "bad json"})
            if self.path != "/v1/completions":
                return self._json(404, {"error": "not found"})
            if time.monotonic() < oracle.ready_at:
                return self._json(503, {"error": "loading"})
            with oracle.lock:
                oracle.requests += 1
            prompts = req.get("prompt", "")
            prompts = prompts if isinstance(prompts, list) else [prompts]
            max_tokens = int(req.get("max_tokens") or 16)
            if req.get("stream"):
                return self._stream(prompts[0] if prompts else "", max_tokens)
            choices = []
            for i, p in enumerate(prompts):
                text = oracle.answer(p) if isinstance(p, str) else None
                if text is None:
                    text = " x" * max_tokens
                choices.append({"index": i, "text": text, "finish_reason": "stop", "logprobs": None})
            time.sleep(oracle.ttft_s)
            return self._json(200, {"id": "cmpl-oracle", "object": "text_completion", "created": int(time.time()),
                                    "model": oracle.model_name, "choices": choices,
                                    "usage": {"prompt_tokens": 0, "completion_tokens": max_tokens,
                                              "total_tokens": max_tokens}})

        def _stream(self, prompt: str, max_tokens: int) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()

            def send(obj) -> None:
                data = b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            ans = oracle.answer(prompt)
            pieces = [ans] if ans is not None else [" x"] * max_tokens
            prompt_tokens = max(1, len(prompt.split()))
            t_next = time.perf_counter() + oracle.ttft_s
            for i, piece in enumerate(pieces):
                delay = t_next - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                send({"id": "cmpl-oracle", "object": "text_completion", "model": oracle.model_name,
                      "choices": [{"index": 0, "text": piece, "finish_reason": None if i < len(pieces) - 1 else "length",
                                   "logprobs": None}]})
                t_next += oracle.tpot_s
            send({"id": "cmpl-oracle", "object": "text_completion", "model": oracle.model_name, "choices": [],
                  "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(pieces),
                            "total_tokens": prompt_tokens + len(pieces)}})
            send(b"[DONE]")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    return H


def serve(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m vpatch.validation.tinymodel serve")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--model-name", default="vpatch-oracle")
    ap.add_argument("--corrupt-frac", type=float, default=None)
    ap.add_argument("--corrupt-seed", type=int, default=0)
    ap.add_argument("--ttft-ms", type=float, default=None)
    ap.add_argument("--tpot-ms", type=float, default=None)
    ap.add_argument("--ready-delay-s", type=float, default=0.0)
    a = ap.parse_args(argv)
    env = os.environ
    frac = a.corrupt_frac if a.corrupt_frac is not None else float(env.get("VPATCH_TINY_CORRUPT_FRAC", "0") or 0)
    ttft = a.ttft_ms if a.ttft_ms is not None else float(env.get("VPATCH_TINY_TTFT_MS", "2") or 0)
    tpot = a.tpot_ms if a.tpot_ms is not None else float(env.get("VPATCH_TINY_TPOT_MS", "1") or 0)
    oracle = Oracle(Path(a.data_dir) if a.data_dir else default_data_dir(), frac, a.corrupt_seed, ttft, tpot,
                    a.ready_delay_s, a.model_name)
    httpd = ThreadingHTTPServer((a.host, a.port), _make_handler(oracle))
    httpd.daemon_threads = True
    print(f"oracle listening on http://{a.host}:{a.port} corrupt_frac={frac} ttft_ms={ttft} tpot_ms={tpot}", flush=True)
    import signal

    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=httpd.shutdown, daemon=True).start())
    try:
        httpd.serve_forever(poll_interval=0.1)
    finally:
        httpd.server_close()
        print("oracle stopped", flush=True)


def oracle_argv(python: str | Path, port: int, *, data_dir: Path | None = None, corrupt_frac: float | None = None,
                tpot_ms: float | None = None, ttft_ms: float | None = None, ready_delay_s: float = 0.0,
                model_name: str = "vpatch-oracle") -> list[str]:
    """The argv that starts the oracle server with ``python`` (which must import vpatch)."""
    argv = [str(python), "-m", "vpatch.validation.tinymodel", "serve", "--port", str(port), "--model-name", model_name,
            "--ready-delay-s", str(ready_delay_s)]
    if data_dir is not None:
        argv += ["--data-dir", str(data_dir)]
    if corrupt_frac is not None:
        argv += ["--corrupt-frac", str(corrupt_frac)]
    if tpot_ms is not None:
        argv += ["--tpot-ms", str(tpot_ms)]
    if ttft_ms is not None:
        argv += ["--ttft-ms", str(ttft_ms)]
    return argv


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        return serve(argv[1:])
    if argv[:1] == ["build"] and len(argv) >= 2:
        kind = "llama"
        if "--kind" in argv:
            i = argv.index("--kind")
            kind = argv[i + 1]
            del argv[i:i + 2]
        out = TINY_MODELS[kind](argv[1], seed=int(argv[2]) if len(argv) > 2 else 0)
        print(out)
        return None
    print("usage: python -m vpatch.validation.tinymodel serve --port N [...] | build DIR [SEED] [--kind llama|qwen3-moe]", file=sys.stderr)
    raise SystemExit(2)


if __name__ == "__main__":
    main()
