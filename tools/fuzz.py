"""Fuzz the two file formats qembed-gguf reads from the internet: GGUF models and safetensors checkpoints.

Mutants of a valid file (the bundled tiny model, converted) are loaded in worker subprocesses —
GGUF through ``Embedder(path).embed([...])`` (so llama.cpp sees whatever passes validation),
safetensors through ``qembed_gguf.convert`` — and each outcome is classified:

* ``ok``: loaded and ran (e.g. a byte flipped inside tensor data: only ``verify=True`` catches that);
* ``typed``: refused with a :class:`~qembed_gguf.errors.QembedError` (the goal for malformed files);
* ``untyped``: any other exception — a bug;  ``crash``: the worker died of a signal — a bug;
* ``hang``: no answer within the time limit (10 s) — a bug.

A worker handles many mutants in turn and is restarted after a crash or hang.

    python tools/fuzz.py --gguf 2000 --safetensors 2000 --out benchmarks/results/fuzz.json

Mutations: truncation at every region boundary and at random points; bit flips in the header,
key/values and tensor infos; huge counts and lengths; overlapping and out-of-bounds offsets; wrong
value and tensor types; and, for safetensors, header-length, JSON, dtype, shape and offset edits.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("fuzz")
TIMEOUT_S = 10.0


# -- GGUF layout: where each field of a valid file lives ------------------------------------------------
def gguf_layout(data: bytes) -> dict[str, list[int]]:
    """Byte offsets of the fields of a (valid) GGUF file, by kind."""
    u32 = lambda p: struct.unpack_from("<I", data, p)[0]  # noqa: E731
    u64 = lambda p: struct.unpack_from("<Q", data, p)[0]  # noqa: E731
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    out: dict[str, list[int]] = {k: [] for k in ("count", "strlen", "vtype", "arrcount", "ndims", "dim", "ttype",
                                                 "toffset", "boundary")}
    out["count"] += [8, 16]
    pos = 24
    n_tensors, n_kv = u64(8), u64(16)
    out["boundary"] += [4, 8, 16, 24]

    def string(p):
        out["strlen"].append(p)
        return p + 8 + u64(p)

    for _ in range(n_kv):
        pos = string(pos)
        out["vtype"].append(pos)
        t = u32(pos)
        pos += 4
        if t == 8:
            pos = string(pos)
        elif t == 9:
            et = u32(pos)
            out["arrcount"].append(pos + 4)
            n = u64(pos + 4)
            pos += 12
            if et == 8:
                for _ in range(n):
                    pos += 8 + u64(pos)
            else:
                pos += n * sizes[et]
        else:
            pos += sizes[t]
        out["boundary"].append(pos)
    for _ in range(n_tensors):
        pos = string(pos)
        out["ndims"].append(pos)
        nd = u32(pos)
        pos += 4
        out["dim"] += [pos + 8 * i for i in range(nd)]
        pos += 8 * nd
        out["ttype"].append(pos)
        out["toffset"].append(pos + 4)
        pos += 12
        out["boundary"].append(pos)
    out["header_end"] = [pos]
    return out


HUGE = [2**64 - 1, 2**63, 2**63 - 1, 2**32, 2**32 - 1, 2**31, 10**12]


def gguf_mutants(data: bytes, n: int, seed: int = 0):
    """Yield (description, bytes) for ``n`` mutants of a valid GGUF file."""
    rng = random.Random(seed)
    lay = gguf_layout(data)
    header_end = lay["header_end"][0]
    offs = [struct.unpack_from("<Q", data, p)[0] for p in lay["toffset"]]
    made = 0

    def put64(b: bytearray, p: int, v: int) -> None:
        struct.pack_into("<Q", b, p, v % 2**64)

    boundaries = sorted(set(lay["boundary"]))
    for b in boundaries:  # truncation at every region boundary (and one byte either side)
        for cut in (b - 1, b, b + 1):
            if made < n and 0 < cut < len(data):
                made += 1
                yield f"truncate at {cut} (boundary {b})", data[:cut]
    kinds = ["trunc_random", "bitflip_header", "huge", "small_len", "vtype", "ttype", "ndims", "dim", "overlap",
             "oob", "misalign", "dataflip", "swap_kv_type_array"]
    while made < n:
        kind = kinds[made % len(kinds)]
        m = bytearray(data)
        if kind == "trunc_random":
            cut = rng.randrange(1, len(data))
            made += 1
            yield f"truncate at {cut}", bytes(data[:cut])
            continue
        if kind == "bitflip_header":
            for _ in range(rng.choice([1, 1, 2, 4, 16])):
                p = rng.randrange(0, header_end)
                m[p] ^= 1 << rng.randrange(8)
            desc = "bit flips in the header"
        elif kind == "huge":
            field = rng.choice(["count", "strlen", "arrcount", "dim"])
            p = rng.choice(lay[field])
            v = rng.choice(HUGE + [len(data), len(data) + 1])
            put64(m, p, v)
            desc = f"{field} at {p} = {v}"
        elif kind == "small_len":
            p = rng.choice(lay["strlen"] + lay["arrcount"])
            v = struct.unpack_from("<Q", data, p)[0]
            put64(m, p, max(0, v + rng.choice([-3, -1, 1, 3])))
            desc = f"length at {p} off by a little"
        elif kind == "vtype":
            p = rng.choice(lay["vtype"])
            v = rng.choice([0, 4, 6, 7, 8, 9, 10, 12, 13, 255, 2**32 - 1])
            struct.pack_into("<I", m, p, v)
            desc = f"value type at {p} = {v}"
        elif kind == "ttype":
            p = rng.choice(lay["ttype"])
            v = rng.choice([0, 1, 2, 8, 12, 14, 24, 30, 31, 39, 40, 1000])
            struct.pack_into("<I", m, p, v)
            desc = f"tensor type at {p} = {v}"
        elif kind == "ndims":
            p = rng.choice(lay["ndims"])
            v = rng.choice([0, 3, 4, 5, 2**32 - 1])
            struct.pack_into("<I", m, p, v)
            desc = f"n_dims at {p} = {v}"
        elif kind == "dim":
            p = rng.choice(lay["dim"])
            v = rng.choice([0, 1, 2, 31, 33, 4097, 2**20])
            put64(m, p, v)
            desc = f"dimension at {p} = {v}"
        elif kind == "overlap":
            i, j = rng.sample(range(len(offs)), 2)
            put64(m, lay["toffset"][i], offs[j])
            desc = f"tensor {i} offset = tensor {j}'s"
        elif kind == "oob":
            i = rng.randrange(len(offs))
            put64(m, lay["toffset"][i], rng.choice([len(data), len(data) - header_end, 2**40, 2**64 - 32]))
            desc = f"tensor {i} offset out of bounds"
        elif kind == "misalign":
            i = rng.randrange(len(offs))
            put64(m, lay["toffset"][i], offs[i] + rng.choice([1, 4, 8, 16]))
            desc = f"tensor {i} offset misaligned"
        elif kind == "dataflip":
            p = rng.randrange(header_end, len(data))
            m[p] ^= 1 << rng.randrange(8)
            desc = f"bit flip in tensor data at {p}"
        else:
            p = rng.choice(lay["vtype"])
            struct.pack_into("<I", m, p, 9)
            desc = f"value type at {p} = array"
        made += 1
        yield desc, bytes(m)


def safetensors_mutants(data: bytes, n: int, seed: int = 0):
    """Yield (description, bytes) for ``n`` mutants of a valid safetensors file."""
    rng = random.Random(seed)
    hlen = struct.unpack_from("<Q", data, 0)[0]
    header = json.loads(data[8:8 + hlen])
    names = [k for k in header if k != "__metadata__"]
    made = 0
    for cut in sorted({1, 7, 8, 9, 8 + hlen // 2, 8 + hlen - 1, 8 + hlen, 8 + hlen + 1, len(data) - 1}):
        if made < n:
            made += 1
            yield f"truncate at {cut}", data[:cut]

    def rebuild(h: dict) -> bytes:
        raw = json.dumps(h).encode()
        raw += b" " * (-len(raw) % 8)
        return struct.pack("<Q", len(raw)) + raw + data[8 + hlen:]

    kinds = ["trunc", "hlen", "jsonflip", "dtype", "shape", "offsets", "overlap", "oob", "types", "dataflip", "extra"]
    while made < n:
        kind = kinds[made % len(kinds)]
        h = json.loads(data[8:8 + hlen])
        name = rng.choice(names)
        if kind == "trunc":
            cut = rng.randrange(1, len(data))
            out, desc = data[:cut], f"truncate at {cut}"
        elif kind == "hlen":
            v = rng.choice(HUGE + [0, 1, hlen - 1, hlen + 1, len(data), 100 * 2**20 + 1])
            out, desc = struct.pack("<Q", v % 2**64) + data[8:], f"header length = {v}"
        elif kind == "jsonflip":
            m = bytearray(data)
            for _ in range(rng.choice([1, 2, 8])):
                m[8 + rng.randrange(hlen)] ^= 1 << rng.randrange(8)
            out, desc = bytes(m), "bit flips in the JSON header"
        elif kind == "dtype":
            h[name]["dtype"] = rng.choice(["F64", "I8", "BOOL", "F8_E4M3", "XX", 7, None, "bf16"])
            out, desc = rebuild(h), f"{name} dtype = {h[name]['dtype']!r}"
        elif kind == "shape":
            s = list(h[name]["shape"])
            choice = rng.choice(["neg", "zero", "big", "drop", "add", "str", "swap"])
            if choice == "neg":
                s[0] = -s[0]
            elif choice == "zero":
                s[0] = 0
            elif choice == "big":
                s[0] = 2**62
            elif choice == "drop" and len(s) > 1:
                s = s[:1]
            elif choice == "add":
                s = s + [1]
            elif choice == "str":
                s = [str(x) for x in s]
            else:
                s = s[::-1]
            h[name]["shape"] = s
            out, desc = rebuild(h), f"{name} shape = {s}"
        elif kind in ("offsets", "overlap", "oob"):
            a, b = h[name]["data_offsets"]
            other = h[rng.choice(names)]["data_offsets"]
            new = {"offsets": [b, a], "overlap": list(other), "oob": [a, len(data) * 2]}[kind]
            h[name]["data_offsets"] = new
            out, desc = rebuild(h), f"{name} data_offsets = {new}"
        elif kind == "types":
            h[name] = rng.choice([[], "x", None, 3, {"dtype": "F32"}, {"dtype": "F32", "shape": [1], "data_offsets": [0]}])
            out, desc = rebuild(h), f"{name} entry = {h[name]!r}"
        elif kind == "dataflip":
            m = bytearray(data)
            m[rng.randrange(8 + hlen, len(data))] ^= 1 << rng.randrange(8)
            out, desc = bytes(m), "bit flip in tensor data"
        else:
            h["__metadata__"] = rng.choice([{"format": "pt"}, {"a": 1}, "x", None])
            out, desc = rebuild(h), f"__metadata__ = {h['__metadata__']!r}"
        made += 1
        yield desc, out


# -- the worker: loads mutants sent on stdin, one JSON line each way ------------------------------------------
def worker() -> None:
    import numpy as np

    from qembed_gguf import Embedder, convert
    from qembed_gguf.errors import QembedError

    # answers go to a private copy of stdout; whatever llama.cpp prints to fd 1 goes to stderr
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    for line in sys.stdin:
        job = json.loads(line)
        try:
            if job["kind"] == "gguf":
                with Embedder(job["path"], n_threads=1) as e:
                    v = e.embed(["hello world", "bonjour"])
                    if not np.isfinite(v).all():
                        raise RuntimeError("non-finite vectors without a typed error")
            else:
                convert(job["path"], outtype="f16", outfile=job["out"], force=True, quiet=True)
            res = {"outcome": "ok"}
        except QembedError as exc:
            res = {"outcome": "typed", "error": f"{type(exc).__name__}: {exc}"[:300]}
        except Exception as exc:  # noqa: BLE001 - that is what we are looking for
            res = {"outcome": "untyped", "error": f"{type(exc).__name__}: {exc}"[:300]}
        answers.write(json.dumps(res) + "\n")
        answers.flush()


class Pool:
    """One worker subprocess, restarted after a crash or a hang."""

    def __init__(self):
        self.proc = None

    def _start(self):
        # the worker imports the installed qembed_gguf, as the tests and users do
        self.proc = subprocess.Popen([sys.executable, __file__, "_worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def run(self, job: dict, timeout: float) -> dict:
        import selectors

        if self.proc is None or self.proc.poll() is not None:
            self._start()
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        # the first job of a fresh worker also pays its imports
        ready = sel.select(timeout + (5 if job.get("_fresh") else 0))
        sel.close()
        if not ready:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
            return {"outcome": "hang"}
        line = self.proc.stdout.readline()
        if not line:
            rc = self.proc.wait()
            self.proc = None
            return {"outcome": "crash", "error": f"worker died with {rc}"}
        return json.loads(line)

    def close(self):
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.wait()


def fuzz(kind: str, n: int, work: Path, *, seed: int = 0, timeout: float = TIMEOUT_S) -> dict:
    """Generate ``n`` mutants of ``kind`` ('gguf' or 'safetensors') and load each; a summary."""
    from qembed_gguf import convert, registry

    tiny = registry.bundled_dir(registry.get_spec("tiny"))
    work.mkdir(parents=True, exist_ok=True)
    if kind == "gguf":
        base = work / "base.gguf"
        if not base.exists():
            convert(tiny, outtype="q8_0", outfile=base, quiet=True, force=True)
        mutants = gguf_mutants(base.read_bytes(), n, seed)
    else:
        folder = work / "ckpt"
        if folder.exists():
            shutil.rmtree(folder)
        shutil.copytree(tiny, folder)
        base = folder / "model.safetensors"
        original = base.read_bytes()
        mutants = safetensors_mutants(original, n, seed)
    pool = Pool()
    counts: dict[str, int] = {}
    bugs = []
    started = time.time()
    fresh = True
    try:
        for i, (desc, blob) in enumerate(mutants):
            path = work / "mutant.gguf" if kind == "gguf" else base
            path.write_bytes(blob)
            job = {"kind": kind, "path": str(path if kind == "gguf" else folder), "out": str(work / "out.gguf"),
                   "_fresh": fresh}
            res = pool.run(job, timeout)
            fresh = res["outcome"] in ("crash", "hang")
            counts[res["outcome"]] = counts.get(res["outcome"], 0) + 1
            if res["outcome"] in ("untyped", "crash", "hang"):
                bugs.append({"mutant": i, "mutation": desc, **res})
                (work / f"bug-{i}.{kind}").write_bytes(blob)
                log.warning("mutant %d (%s): %s %s", i, desc, res["outcome"], res.get("error", ""))
    finally:
        pool.close()
    return {"format": kind, "mutants": n, "outcomes": counts, "bugs": bugs, "seconds": round(time.time() - started, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gguf", type=int, default=2000, help="GGUF mutants")
    p.add_argument("--safetensors", type=int, default=2000, help="safetensors mutants")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the summary JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    results = []
    with tempfile.TemporaryDirectory(prefix="qembed-fuzz-") as tmp:
        for kind, n in (("gguf", args.gguf), ("safetensors", args.safetensors)):
            if n:
                r = fuzz(kind, n, Path(tmp) / kind, seed=args.seed)
                log.info("%s: %d mutants in %.0f s: %s", kind, n, r["seconds"], r["outcomes"])
                results.append(r)
    summary = {"timeout_s": TIMEOUT_S, "seed": args.seed, "results": results}
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({r["format"]: r["outcomes"] for r in results}))
    return 1 if any(r["bugs"] for r in results) else 0


if __name__ == "__main__":
    if sys.argv[1:] == ["_worker"]:
        logging.disable(logging.CRITICAL)
        worker()
        sys.exit(0)
    sys.exit(main())
