"""Plain-text renderings of a GGUF file for people: the conversion summary and ``info``. Pure."""

from __future__ import annotations

from .fileinfo import GGUFInfo

__all__ = ["render_summary", "render_info"]


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} GB"  # pragma: no cover


def render_summary(info: GGUFInfo) -> str:
    """Tensor types, file size and bits per weight of a written file, plus block-size fallbacks."""
    rows = [("type", "tensors", "params", "size", "share")]
    total = info.n_params or 1
    for name, (count, params, nbytes) in info.type_mix.items():
        rows.append((name, str(count), f"{params:,}", _size(nbytes), f"{100 * params / total:.1f}%"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"{info.path}: {_size(info.file_size)}, {info.n_params:,} parameters, "
                 f"{info.bits_per_weight:.2f} bits/weight ({info.file_type})")
    fallbacks = info.fallbacks()
    if fallbacks:
        shown = ", ".join(f"{t.name} ({t.type}, rows of {t.shape[0]})" for t in fallbacks[:4])
        more = f" and {len(fallbacks) - 4} more" if len(fallbacks) > 4 else ""
        lines.append(f"note: {len(fallbacks)} tensor(s) kept a wider type because their row length is not a "
                     f"multiple of the block size: {shown}{more}")
    return "\n".join(lines)


def render_info(info: GGUFInfo) -> str:
    g = info.get
    eos_id = g("tokenizer.ggml.eos_token_id")
    lines = [
        f"file:           {info.path} ({_size(info.file_size)})",
        f"name:           {g('general.name', '?')}",
        f"architecture:   {info.architecture}  layers {info.layers}  dim {info.dim}  "
        f"heads {info.arch_key('attention.head_count')}/{info.arch_key('attention.head_count_kv')}  "
        f"context {info.arch_key('context_length')}",
        f"pooling:        {info.pooling}",
        f"tokenizer:      {g('tokenizer.ggml.model')} / pre {g('tokenizer.ggml.pre')}  "
        f"vocab {len(g('tokenizer.ggml.tokens') or [])}",
        f"EOS:            {info.eos_token!r} (id {eos_id})  add_eos {g('tokenizer.ggml.add_eos_token')}  "
        f"add_bos {g('tokenizer.ggml.add_bos_token')}",
        f"quantization:   {info.file_type}, {info.bits_per_weight:.2f} bits/weight, "
        + ", ".join(f"{k} x{v[0]}" for k, v in info.type_mix.items()),
    ]
    if info.by_qembed:
        lines.append(f"qembed:         MRL dims {info.mrl_min_dim}..{info.dim}  source {g('qembed.source')}  "
                     f"({g('qembed.converter')})")
        lines.append(f"query template: {g('qembed.query_template')!r}")
    else:
        lines.append("qembed:         not converted by qembed-gguf (no qembed.* keys); registry defaults apply")
    if g("tokenizer.chat_template") is not None:
        lines.append("note:           has a chat template; qembed-gguf never compiles it")
    problems = info.problems()
    for p in problems:
        lines.append(f"WARNING:        {p}")
    lines.append("status:         " + ("OK for Qwen3 embeddings" if not problems else
                                      f"{len(problems)} problem(s): vectors from this file may be wrong"))
    return "\n".join(lines)
