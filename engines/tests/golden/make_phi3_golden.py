#!/usr/bin/env python3
"""Makes the golden data of engines/tests/phi3.rs once, with Hugging Face transformers' own
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

# A character-level tokenizer.json for the tiny model (96 ids): <unk>, 92 characters from space to
# '{', then Phi-4's chat tokens, so the model folder loads like a real one with its own tokenizer.
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from tokenizers import AddedToken

vocab = {"<unk>": 0}
for i, c in enumerate(chr(x) for x in range(32, 124)):
    vocab[c] = i + 1
for i, s in enumerate(["<|im_start|>", "<|im_sep|>", "<|im_end|>"]):
    vocab[s] = 93 + i
tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
tok.decoder = decoders.Fuse()
tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in ["<|im_start|>", "<|im_sep|>", "<|im_end|>"]])
tok.save(os.path.join(out, "tokenizer.json"))
print("tokenizer", tok.encode("<|im_start|>user<|im_sep|>Hi there<|im_end|>").ids)
