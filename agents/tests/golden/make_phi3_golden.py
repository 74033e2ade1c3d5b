#!/usr/bin/env python3
"""Makes the golden data of agents/tests/phi3.rs once, with Hugging Face transformers' own
Phi3ForCausalLM: a tiny random Phi-3-architecture model saved as a Hugging Face folder
(config.json + model.safetensors) and its logits for one token sequence at several lengths (past
position 256, where bf16 RoPE tables go wrong).

usage: make_phi3_golden.py OUT_DIR      (needs: pip install torch transformers safetensors)
Deterministic for a given torch and transformers version; the versions are written into the output.
"""
import json, os, sys

import torch
import transformers
from safetensors.torch import save_file
from transformers import Phi3Config, Phi3ForCausalLM

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
torch.manual_seed(0)
cfg = Phi3Config(
    vocab_size=96, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
    num_attention_heads=8, num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=10000.0,
    max_position_embeddings=1024, hidden_act="silu", tie_word_embeddings=False,
    bos_token_id=1, eos_token_id=2, pad_token_id=0, rope_scaling=None,
)
cfg._attn_implementation = "eager"
model = Phi3ForCausalLM(cfg).eval()
with torch.no_grad():
    for name, p in model.named_parameters():
        if "norm" in name:
            p.uniform_(0.5, 1.5)
        else:
            p.normal_(0.0, 0.08)
state = {k: v.detach().contiguous().float() for k, v in model.state_dict().items()}
save_file(state, os.path.join(out, "model.safetensors"))
config = cfg.to_dict()
config.pop("_attn_implementation", None)
with open(os.path.join(out, "config.json"), "w") as f:
    json.dump({k: config[k] for k in sorted(config) if not k.startswith("_")}, f, indent=1, default=str)

tokens = [(i * 37 + 14) % 96 for i in range(300)]
lengths = [1, 12, 20, 256, 257, 300]
with torch.no_grad():
    logits = model(torch.tensor([tokens])).logits[0]  # (300, vocab), causal: row n-1 sees tokens[:n]
golden = {
    "made_by": f"transformers {transformers.__version__}, torch {torch.__version__}",
    "tokens": tokens,
    "checks": [{"length": n, "logits": [round(float(x), 7) for x in logits[n - 1]]} for n in lengths],
}
with open(os.path.join(out, "golden.json"), "w") as f:
    json.dump(golden, f)
print("wrote", out)
