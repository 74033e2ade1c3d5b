#!/usr/bin/env python3
"""The peer of `phiforge bench-load`: transformers fed the same requests in static batches.

Reads the requests `phiforge bench-load --write-requests FILE` wrote (`at_s`, `prompt` token ids,
`output` tokens) and replays them through transformers' Phi3ForCausalLM, built by the peer
driver `../shared/gpu/hf_bench.py` (random weights of its tiny shape or Phi-4's, on the CPU or a
GPU) at the dtype asked for.
Static batching, as a server without continuous batching does: whenever the model is free, the
requests that have arrived (up to SLOTS, in arrival order; if none has, the next one once it
does) make one batch, their prompts left-padded to the longest, which generates (greedy, stop
tokens held off) as many tokens as its longest output; requests arriving meanwhile wait for the
next batch. Each request's own tokens are timed with a streamer.

Prints one JSON line with the keys of `bench-load`'s `result`: tokens/s counts prompt and output
tokens (each request's own, unpadded) over the wall time; time to first token from each request's
arrival; the time between a request's tokens; percentiles as `bench-load` takes them.
"""
import argparse
import json
import math
import os
import sys
import time

here = os.path.dirname(os.path.abspath(__file__))
# The peer driver: beside the checkout (../shared/gpu), or where HF_SHARED says (a GPU machine).
sys.path.insert(0, os.environ.get("HF_SHARED") or os.path.join(here, "..", "..", "shared", "gpu"))
import hf_bench  # noqa: E402
import torch  # noqa: E402
from transformers.generation.streamers import BaseStreamer  # noqa: E402


class Ticks(BaseStreamer):
    """When each generated step's tokens came out (the first `put` is the prompt)."""

    def __init__(self):
        self.prompt_seen = False
        self.ticks = []

    def put(self, value):
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.ticks.append(time.perf_counter())

    def end(self):
        pass


def pct(values, p):
    if not values:
        return 0.0
    v = sorted(values)
    i = min(max(math.ceil(p * len(v)), 1), len(v)) - 1
    return round(v[i], 3)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("requests", help="JSON lines from `phiforge bench-load --write-requests`")
    ap.add_argument("--layers", type=int, default=None, help="default: the shape's own")
    ap.add_argument("--slots", type=int, default=16, help="requests per static batch, at most")
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--shape", choices=["tiny", "phi4"], default="tiny")
    a = ap.parse_args()
    load = []
    with open(a.requests) as f:
        for n, line in enumerate(f, 1):
            try:
                r = json.loads(line)
                load.append((float(r["at_s"]), [int(t) for t in r["prompt"]], int(r["output"])))
            except (ValueError, KeyError, TypeError) as e:
                sys.exit(f"{a.requests}:{n}: not a request line ({e})")
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    torch.manual_seed(0)
    cfg = hf_bench.phi4_config(a.layers, tiny=a.shape == "tiny")
    dev = a.device
    model = hf_bench.build_model(cfg, dev, dtype)
    pad = cfg.pad_token_id
    ttft, itl = [], []
    prompt_tokens = output_tokens = computed = batches = 0
    with torch.inference_mode():
        warm = hf_bench.prompts(2, 32, cfg.vocab_size, 1, dev)
        hf_bench.generate_once(model, warm, 2, pad)
        start = time.perf_counter()
        i = 0
        while i < len(load):
            wait = start + load[i][0] - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            now = time.perf_counter() - start
            j = i + 1
            while j < len(load) and j - i < a.slots and load[j][0] <= now:
                j += 1
            batch, i = load[i:j], j
            width = max(len(p) for _, p, _ in batch)
            ids = torch.tensor([[pad] * (width - len(p)) + p for _, p, _ in batch], device=dev)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for _, p, _ in batch],
                                device=dev)
            g = max(o for _, _, o in batch)
            ticks = Ticks()
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                 min_new_tokens=g, max_new_tokens=g, pad_token_id=pad,
                                 use_cache=True, streamer=ticks)
            if out.shape[1] - width != g or len(ticks.ticks) != g:
                sys.exit(f"batch ending at request {i}: {out.shape[1] - width} tokens of {g}")
            computed += len(batch) * (width + g)
            batches += 1
            for at, p, o in batch:
                prompt_tokens += len(p)
                output_tokens += o
                own = ticks.ticks[:o]
                ttft.append((own[0] - (start + at)) * 1000)
                itl.extend((b - a_) * 1000 for a_, b in zip(own, own[1:]))
        wall = time.perf_counter() - start
    print(json.dumps({
        "engine": "hf-transformers", "batching": "static", "slots": a.slots, "dtype": a.dtype,
        "device": dev, "shape": a.shape, "layers": cfg.num_hidden_layers,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "result": {
            "requests": len(load), "prompt_tokens": prompt_tokens, "output_tokens": output_tokens,
            "wall_s": round(wall, 3), "total_tok_s": round((prompt_tokens + output_tokens) / wall, 3),
            "output_tok_s": round(output_tokens / wall, 3),
            "ttft_ms_p50": pct(ttft, 0.5), "ttft_ms_p90": pct(ttft, 0.9), "ttft_ms_p99": pct(ttft, 0.99),
            "itl_ms_p50": pct(itl, 0.5), "itl_ms_p90": pct(itl, 0.9), "itl_ms_p99": pct(itl, 0.99),
            "computed_tokens": computed, "batches": batches,
        },
    }), flush=True)


if __name__ == "__main__":
    main()
