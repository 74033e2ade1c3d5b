#!/usr/bin/env python3
"""Prefill of transformers' Phi3ForCausalLM on the CPU, for `benches/prefill_cpu.sh`.

The peer's own driver (`../shared/gpu/hf_bench.py`) builds the model and times a prefill; it fixes
the dtype at bf16, so this reuses its functions (same configuration, same random init, same
`prefill_once`: one forward, KV cache built, logits of the last position) at the dtype asked for.
Prints one JSON line per batch size, the keys of `phiforge bench-engine`'s lines.
"""
import argparse
import json
import os
import sys
import time

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "..", "shared", "gpu"))
import hf_bench  # noqa: E402
import torch  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", default="1,4")
    ap.add_argument("--prompt-len", type=int, default=2000)
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--repeat", type=int, default=1, help="timed prefills per batch size (best kept)")
    a = ap.parse_args()
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    torch.manual_seed(0)
    cfg = hf_bench.phi4_config(a.layers, tiny=True)
    model = hf_bench.build_model(cfg, "cpu", dtype)
    with torch.inference_mode():
        hf_bench.prefill_once(model, hf_bench.prompts(1, 32, cfg.vocab_size, 12345, "cpu"))
        for b in [int(x) for x in a.batch.split(",") if x.strip()]:
            ids = hf_bench.prompts(b, a.prompt_len, cfg.vocab_size, b, "cpu")
            best = float("inf")
            for _ in range(a.repeat):
                t = time.perf_counter()
                hf_bench.prefill_once(model, ids)
                best = min(best, time.perf_counter() - t)
            print(json.dumps({
                "engine": "hf-transformers", "batch": b, "prompt_len": a.prompt_len,
                "prefill_tok_s": round(b * a.prompt_len / best, 2), "prefill_ms": round(best * 1000, 3),
                "layers": a.layers, "device": "cpu", "dtype": a.dtype,
                "attn": getattr(model.config, "_attn_implementation", None),
                "threads": torch.get_num_threads(), "torch": torch.__version__,
            }), flush=True)


if __name__ == "__main__":
    main()
