# Sourced by the benchmarks that run transformers beside phiforge: sets `torch_python` to the
# Python of the peers' torch venv (CACHE, default ~/.cache/phiforge-peers, as ../shared/peers
# uses), making it on first use. PyPI's Linux torch is the CUDA build: about 3 GB of wheels.
venv=${CACHE:-$HOME/.cache/phiforge-peers}/venv-torch
if ! "$venv/bin/python" -c 'import torch, transformers' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q -U torch transformers >&2
fi
torch_python=$venv/bin/python
