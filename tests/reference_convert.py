"""Run llama.cpp's own convert_hf_to_gguf.py (vendored in the llama-cpp-python sdist) as a reference.

    python tests/reference_convert.py LLAMA_CPP_DIR MODEL_DIR OUTTYPE=OUT.gguf [OUTTYPE=OUT.gguf ...]
                                      [MODEL_DIR OUTTYPE=OUT.gguf ...]

Each OUTTYPE=OUT.gguf is one run of the converter (``--outtype OUTTYPE --outfile OUT.gguf``) on the
MODEL_DIR before it, all in this one process: torch and transformers are imported once, not once
per file.

The only change to the reference is the BPE pre-tokenizer detection: it fingerprints the
tokenizer by hashing the token ids of a probe string, which a synthetic tokenizer cannot match,
so the pre-type is forced to "qwen2" (what the real Qwen3-Embedding tokenizer is detected as).
Test-only: needs torch and transformers.
"""

import runpy
import sys
from pathlib import Path

root = Path(sys.argv[1])
script = root / "convert_hf_to_gguf.py"
sys.path.insert(0, str(root))
sys.path.insert(1, str(root / "gguf-py"))

from conversion.base import TextModel  # noqa: E402

TextModel.get_vocab_base_pre = lambda self, tokenizer: "qwen2"
model = None
for job in sys.argv[2:]:
    if "=" not in job:  # the next checkpoint
        model = job
        continue
    if model is None:
        raise SystemExit(f"usage: {__doc__.strip().splitlines()[2].strip()}  ({job!r} comes before any MODEL_DIR)")
    outtype, outfile = job.split("=", 1)
    sys.argv = [str(script), model, "--outtype", outtype, "--outfile", outfile]
    runpy.run_path(str(script), run_name="__main__")
